//! Redis backend (being written).
use super::BusError;
pub struct RedisBus;
impl RedisBus {
    pub async fn connect(uri: &str, _exchange: &str) -> Result<Self, BusError> {
        Err(BusError::InvalidUri { uri: uri.into(), reason: "Redis backend not built yet".into() })
    }
}
#[async_trait::async_trait]
impl super::Bus for RedisBus {
    async fn request(&self, _: &str, _: serde_json::Value, _: std::time::Duration) -> Result<serde_json::Value, BusError> { Err(BusError::Transport("unbuilt".into())) }
    async fn publish(&self, _: &str, _: &serde_json::Value) -> Result<(), BusError> { Err(BusError::Transport("unbuilt".into())) }
    async fn subscribe(&self, _: &[&str]) -> Result<super::Subscription, BusError> { Err(BusError::Transport("unbuilt".into())) }
    async fn serve(&self, _: &str, _: &[&str], _: std::sync::Arc<dyn super::Handler>, _: super::ServeOptions) -> Result<super::ServeHandle, BusError> { Err(BusError::Transport("unbuilt".into())) }
}
