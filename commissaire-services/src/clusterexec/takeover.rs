//! Taking over operations whose instance died.
//!
//! Every instance looks, every third of a lease, at the operation records of
//! every cluster. A record `in_process` whose lease ran out (or that has no
//! owner) is claimed with a compare-and-swap write that makes this instance
//! its owner with a fresh lease — of several instances trying at once, one
//! wins — and is resumed from its `progress` ([`super::drive`]). A record
//! without readable progress cannot be resumed safely (a host might be
//! rebooted twice): it is ended `failed`, saying so.
//!
//! Leases compare timestamps written by different machines: their clocks must
//! agree to well within a lease (NTP does).

use std::sync::Arc;

use commissaire_core::{
    model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade},
    storage_client::StorageError,
    timestamp,
};

use super::service::{Inner, OpRecord, progress_of, request_of};

pub(super) fn spawn(inner: Arc<Inner>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(inner.settings.renew_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = scan(&inner).await {
                tracing::warn!(error = %err, "cannot look for operations to take over");
            }
        }
    })
}

/// Whether a lease has run out (an empty or unreadable one has).
fn expired(lease_expires_at: &str) -> bool {
    match timestamp::parse(lease_expires_at) {
        Some(at) => at <= time::OffsetDateTime::now_utc(),
        None => true,
    }
}

async fn scan(inner: &Arc<Inner>) -> Result<(), StorageError> {
    for cluster in inner.storage.list::<Cluster>().await? {
        take::<ClusterRestart>(inner, &cluster.name).await?;
        take::<ClusterUpgrade>(inner, &cluster.name).await?;
        take::<ClusterDeploy>(inner, &cluster.name).await?;
    }
    Ok(())
}

async fn take<R: OpRecord>(inner: &Arc<Inner>, name: &str) -> Result<(), StorageError> {
    if inner.is_driving(R::KIND, name) {
        return Ok(());
    }
    let Some(record) = inner.storage.find::<R>(name).await? else { return Ok(()) };
    if record.status() != "in_process" || !expired(record.lease_expires_at()) {
        return Ok(());
    }
    let previous = record.owner().to_string();
    let deadline = inner.lease_deadline();
    let claimed = inner
        .storage
        .update::<R, _, ()>(name, 1, |record| {
            if record.status() != "in_process" || !expired(record.lease_expires_at()) {
                return Err(());
            }
            let fields = record.fields();
            *fields.owner = inner.instance.clone();
            *fields.lease_expires_at = deadline.clone();
            Ok(true)
        })
        .await;
    let record = match claimed {
        Ok(Ok(record)) => record,
        // someone else claimed it, or it ended meanwhile
        Ok(Err(())) | Err(StorageError::Conflict(_)) => return Ok(()),
        Err(err) => return Err(err),
    };
    let kind = R::KIND;
    tracing::warn!(cluster = %name, operation = kind.as_str(), previous_owner = %previous,
        "taking over an operation whose lease ran out");
    let resumable = progress_of(&record).zip(request_of(&record).ok());
    let Some((state, request)) = resumable else {
        fail_unresumable::<R>(inner, name).await;
        return Ok(());
    };
    if !inner.begin_driving(kind, name) {
        return Ok(());
    }
    inner.publish(kind, name, "taken_over", None, Some(&format!("previous owner: {previous}"))).await;
    let inner = inner.clone();
    tokio::spawn(async move { inner.drive::<R>(request, state).await });
    Ok(())
}

/// Ends a claimed record that cannot be resumed.
async fn fail_unresumable<R: OpRecord>(inner: &Arc<Inner>, name: &str) {
    let reason = "taken over without readable progress: the state of its hosts is unknown, so it was not resumed \
                  (check the hosts, then start it again)";
    let outcome = inner
        .storage
        .update::<R, _, ()>(name, 8, |record| {
            if record.owner() != inner.instance {
                return Err(());
            }
            let fields = record.fields();
            *fields.status = "failed".into();
            *fields.phase = "failed".into();
            *fields.reason = reason.into();
            *fields.finished_at = Some(timestamp::now());
            // what the record said was in process: failed, not forgotten
            let in_process = std::mem::take(fields.in_process);
            fields.failed_hosts.extend(in_process);
            fields.owner.clear();
            fields.lease_expires_at.clear();
            Ok(true)
        })
        .await;
    if !matches!(outcome, Ok(Ok(_))) {
        tracing::error!(cluster = %name, operation = R::KIND.as_str(), "cannot end an unresumable operation");
    }
}
