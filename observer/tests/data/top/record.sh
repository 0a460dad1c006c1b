#!/bin/sh
# Records top.rec (README.md): run from the repository root as root, after
# `cargo build --release -p observer`.
set -eu
ns=topfixture
here=$(dirname "$0")
ip netns add $ns
trap 'ip netns del $ns' EXIT
ip -n $ns link set lo up
# web's address, and a network where nothing answers: the SYN-ACKs to spoofer's sources
# leave by v0 and are dropped at v1 (no address, not its MAC), so their requests stay half-open.
ip -n $ns link add v0 type veth peer name v1
ip -n $ns link set v0 arp off up
ip -n $ns link set v1 up
ip -n $ns addr add 192.0.2.1/24 dev v0
ip -n $ns route add 198.51.100.0/24 dev v0
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
