#!/bin/sh
# The workload the hibernation must preserve: a random token and a counter
# held only in this shell's memory. Every second it appends "token n uptime"
# to a file on the root file system (ext4 on vda) and keeps the same in /run.
# After a resume the counter must continue (no gap, no restart) with the
# same token, and the file must hold 1..n under one token.
# kjvm.workdir=DIR on the kernel command line moves the file (diagnosis only:
# a tmpfs directory takes the root file system out of the picture).
dir=/var/lib/work
for arg in $(cat /proc/cmdline); do
    case "$arg" in kjvm.workdir=*) dir=${arg#kjvm.workdir=} ;; esac
done
mkdir -p "$dir"
token=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
n=0
log=$dir/log
echo "$log" > /run/work.file
echo "$$" > /run/work.pid
while :; do
    n=$((n + 1))
    echo "$token $n $(cut -d' ' -f1 /proc/uptime)" >> "$log"
    echo "$token $n" > /run/work.state.tmp && mv /run/work.state.tmp /run/work.state
    sleep 1
done
