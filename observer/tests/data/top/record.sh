#!/bin/sh
# Records top.rec (README.md): run from the repository root as root, after
# `cargo build --release -p observer`.
set -eu
ns=topfixture
here=$(dirname "$0")
ip netns add $ns
trap 'ip netns del $ns' EXIT
ip -n $ns link set lo up
target/release/observer run --netns /run/netns/$ns --tls --anomalies --close-wait-after 1 \
    --connect-failures 3 --connect-failures-window 2 --update-interval 2 --duration 7 \
    --record "$here/top.rec" --control-socket none -o /dev/null &
obs=$!
sleep 2
ip netns exec $ns python3 "$here/fixture.py" 30 &
fix=$!
wait $obs
kill $fix
wait $fix || true
