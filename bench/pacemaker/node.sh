#!/usr/bin/env bash
# One Pacemaker node of bench/pacemaker-probe. Run by the bench as
#   ip netns exec pcmkbenchN unshare --mount --uts --propagation private bash node.sh N WORKDIR
# Gives this node private tmpfs/bind mounts over the cluster stack's state and
# runtime directories, then runs corosync and pacemakerd in the foreground of
# this mount/UTS/network namespace until they exit.
set -euo pipefail
n=$1; work=$2
name=pcmkbench$n
echo $$ > "$work/node$n.pid"
hostname "$name"

logs=$work/logs/$name
mkdir -p "$logs/pacemaker" "$logs/corosync"
chown -R hacluster:haclient "$logs/pacemaker"
for d in /etc/corosync /var/lib/pacemaker /var/lib/corosync /run /dev/shm; do
    mount -t tmpfs -o mode=0755 "havenbench-$name" "$d"
done
chmod 1777 /dev/shm
mount --bind "$logs/pacemaker" /var/log/pacemaker
mount --bind "$logs/corosync" /var/log/corosync

cp "$work/corosync.conf" /etc/corosync/corosync.conf
mkdir -p /etc/corosync/uidgid.d
mkdir -p /var/lib/pacemaker/{cib,pengine,blackbox,cores,bundles,lrm}
chown -R hacluster:haclient /var/lib/pacemaker
chmod 0750 /var/lib/pacemaker/*
mkdir -p /run/crm /run/havenbench /run/lock
chown hacluster:haclient /run/crm

export PCMK_logfile=/var/log/pacemaker/pacemaker.log PCMK_logfacility=none PCMK_debug=no
# Corosync first, wait for it to answer on its IPC, then pacemakerd.
corosync -f >"$logs/corosync/stdout" 2>&1 &
corosync_pid=$!
echo "$corosync_pid" > "$work/corosync$n.pid"
for _ in $(seq 100); do
    corosync-cfgtool -s >/dev/null 2>&1 && break
    kill -0 "$corosync_pid" 2>/dev/null || { echo "corosync on $name exited" >&2; exit 1; }
    sleep 0.1
done
pacemakerd >"$logs/pacemaker/stdout" 2>&1 &
echo $! > "$work/pacemakerd$n.pid"
wait
