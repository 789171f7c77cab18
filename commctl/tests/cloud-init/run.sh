#!/bin/sh
# Runs inside a test host: cloud-init (extracted in DIR/root) on the NoCloud seed USER_DATA, stages
# init, config and final, with cloud.cfg (next to this script) restricting it to what a test host may do.
# Usage: run.sh DIR USER_DATA
set -eu
DIR=$1
HERE=$(dirname "$0")
export PYTHONPATH="$DIR/root/usr/lib/python3/dist-packages"
mkdir -p /etc/cloud /var/lib/cloud/seed/nocloud
cp "$HERE/cloud.cfg" /etc/cloud/cloud.cfg
cp "$2" /var/lib/cloud/seed/nocloud/user-data
printf 'instance-id: commctl-test-%s\nlocal-hostname: registered\n' "$$" > /var/lib/cloud/seed/nocloud/meta-data
for stage in "init" "modules --mode=config" "modules --mode=final"; do
    # shellcheck disable=SC2086
    /usr/bin/python3 "$DIR/root/usr/bin/cloud-init" $stage
done
