#!/bin/sh
# The soft-dirty tests, run by /init inside the VM that tests/vm/run boots
# (busybox sh; tern, dirty_pages and sdcheck are in /bin). Prints one line per
# test, "VMTEST NAME PASS" or "VMTEST NAME FAIL: reason", which the host parses.
#
#   tern-check             `tern check` says the soft-dirty probe works
#   soft-dirty-accuracy    `tern track --tracker soft-dirty --json` reports, in
#                          every round, exactly the pages the workload wrote
#                          since the last one (plus a bounded number of its own)
#   soft-dirty-untraced    after tracking, the workload runs on, untraced,
#                          and still answers
#   soft-dirty-auto        --tracker auto picks soft-dirty (6.1 has no
#                          UFFD_FEATURE_WP_ASYNC)
#
# There is no pipe from the host test, so the workload (tests/workloads/
# dirty_pages.c) is driven through fifos and rounds are synchronised on the
# lines `tern track` appends to a file: write round k's pages right after
# round k-1 is printed, then wait for round k (the interval leaves ample time;
# a round printed before the writes were done is reported as a race).

PAGES=4096       # buffer pages (16 MiB)
NREG=33          # one-page regions 0..32: even ones read-only, odd ones written
NOISE=24         # pages of the workload's own a round may add (as in tests/track.rs)
INTERVAL=1500    # ms between rounds
ROUNDS=10
W=/tmp/sd

result() { echo "VMTEST $1 $2"; }

echo "VMTEST-KERNEL $(uname -r)"

# --- tern-check --------------------------------------------------------------
tern check > /tmp/check.txt 2>&1
rc=$?
echo "--- tern check (exit $rc)"
cat /tmp/check.txt
sd=$(awk '$1 == "soft-dirty" { print $2 }' /tmp/check.txt)
if [ "$sd" = yes ]; then
    result tern-check PASS
else
    result tern-check "FAIL: soft-dirty probe says '${sd:-nothing}' (tern check exit $rc)"
fi

# --- soft-dirty-accuracy -----------------------------------------------------
mkdir -p $W
fail=""
err() { [ -n "$fail" ] || fail="$*"; }

# The buffer must be a VMA of its own for its per-VMA count to be exact (a
# plain 16 MiB mmap merges with the anonymous mapping next to libc, whose
# TLS page is written every round). dirty_pages' "thp" mode madvises the
# buffer MADV_HUGEPAGE, which splits it off as a VMA of its own (VM_HUGEPAGE);
# THP itself is off here (the kernel turns it off below 512 MiB of RAM; made
# explicit), so the buffer is made of 4 KiB pages as in tests/track.rs.
# (With THP on, soft-dirty marks a whole 2 MiB huge page on the first write.)
thp=/sys/kernel/mm/transparent_hugepage/enabled
echo "--- THP was: $(cat $thp 2> /dev/null)"
echo never > $thp 2> /dev/null
mkfifo $W/cmd $W/out
dirty_pages $PAGES thp < $W/cmd > $W/out 2> $W/workload.err &
wl=$!
exec 3> $W/cmd 4< $W/out

# One line from the workload (10 s at most).
answer() {
    ans=""
    read -t 10 -r ans <&4 || { err "workload said nothing (stderr: $(cat $W/workload.err))"; return 1; }
    return 0
}
# Send one command, return its answer in $ans.
cmd() {
    echo "$1" >&3 || { err "cannot write to the workload"; return 1; }
    answer || return 1
    case "$ans" in error*) err "workload answered '$ans' to '$(echo "$1" | cut -c1-40)'"; return 1 ;; esac
    return 0
}

answer && buf=$(echo "$ans" | awk '$1 == "buf" { print $2 }')
answer && [ "$ans" = ready ] || err "workload did not start (first lines: buf=$buf, $ans)"

# One-page regions, alternately read-only, so each written one is a VMA of
# its own: the per-VMA breakdown then says exactly which page was reported.
i=0
while [ $i -lt $NREG ] && [ -z "$fail" ]; do
    cmd "m 1" && eval "reg_$i=$(echo "$ans" | awk '{ print $3 }')"
    i=$((i + 1))
done
i=0
while [ $i -lt $NREG ] && [ -z "$fail" ]; do
    cmd "p $i 1"
    i=$((i + 2))
done
echo "--- workload $wl: buffer $buf ($PAGES pages), maps before tracking:"
cat /proc/$wl/maps

# Expected ranges of round $1 ($2 = name): buffer pages written ($bufw), odd
# regions written ($regw), and the region mapped in round 9 ($newreg).
expect() {
    echo "round $1 $2" >> $W/expect
    echo "range ${buf#0x} $PAGES $bufw exact buffer" >> $W/expect
    i=1
    while [ $i -lt $NREG ]; do
        eval "a=\$reg_$i"
        want=0
        case " $regw " in *" $i "*) want=1 ;; esac
        echo "range ${a#0x} 1 $want exact region$i" >> $W/expect
        i=$((i + 2))
    done
    [ -z "$newreg" ] || echo "range ${newreg#0x} 8 $newregw exact newregion" >> $W/expect
}

# Write buffer pages "$@" and count them into $bufw.
wbuf() {
    [ $# -gt 0 ] || return 0
    cmd "w $*" && [ "$ans" = "ok $#" ] || err "workload answered '$ans' to w ($# pages)"
    bufw=$((bufw + $#))
}
# Write page 0 of each region in "$@" (odd ids).
wreg() {
    for r in "$@"; do
        cmd "W $r 0" && [ "$ans" = "ok 1" ] || err "workload answered '$ans' to W $r 0"
    done
    regw="$regw $*"
}

# Round k's writes (after round k-1 is printed); sets the expectations.
newreg=""
newregw=0
do_round() {
    bufw=0
    regw=""
    newregw=0
    case $1 in
    1) name=idle ;;
    2) name=first-page; wbuf 0; wreg 1 ;;
    3) name=edges; wbuf 1 2 3 100 511 512 $((PAGES - 1)); wreg 3 31 ;;
    4) name=scattered
       wbuf $(awk -v n=$PAGES 'BEGIN { for (i = 0; i < n; i++) if ((i * 2654435761) % 97 < 7) printf " %d", i }') ;;
    5) name=contiguous; wbuf $(seq 1000 1599); wreg 5 7 9 11 ;;
    6) name=every-7th; wbuf $(seq 0 7 $((PAGES - 1))) ;;
    7) name=same-page; wbuf 42; wreg 1 ;;
    8) name=same-page-again; wbuf 42; wreg 1 ;;
    9) name=new-region
       cmd "m 8" && newreg=$(echo "$ans" | awk '$1 == "map" { print $3 }')
       [ -n "$newreg" ] || err "workload answered '$ans' to m 8"
       newregw=8 ;;
    10) name=unmap-and-all
        cmd "u $NREG" && [ "$ans" = "unmapped $NREG" ] || err "workload answered '$ans' to u $NREG"
        wbuf $(seq 0 $((PAGES - 1)))
        wreg $(seq 1 2 $((NREG - 1))) ;;
    esac
    expect "$1" "$name"
}

lines() { wc -l < $W/rounds.jsonl; }

if [ -z "$fail" ]; then
    : > $W/rounds.jsonl
    : > $W/expect
    t0=$(date +%s)
    tern track --pid $wl --tracker soft-dirty --rounds $ROUNDS --interval-ms $INTERVAL --json \
        > $W/rounds.jsonl 2> $W/track.err &
    tp=$!
    # Armed: tern says so on stderr once clear_refs was written.
    n=0
    while ! grep -q armed $W/track.err; do
        kill -0 $tp 2> /dev/null || { err "tern track ended before arming: $(cat $W/track.err)"; break; }
        n=$((n + 1))
        [ $n -lt 600 ] || { err "tern track did not arm in 60 s"; break; }
        sleep 0.1
    done
    k=1
    while [ $k -le $ROUNDS ] && [ -z "$fail" ]; do
        do_round $k
        [ "$(lines)" -eq $((k - 1)) ] ||
            err "round $k was collected before its writes were done (interval ${INTERVAL} ms too short here?)"
        n=0
        while [ "$(lines)" -lt $k ] && [ -z "$fail" ]; do
            kill -0 $tp 2> /dev/null || { [ "$(lines)" -ge $k ] || err "tern track ended after $(lines) rounds: $(cat $W/track.err)"; break; }
            n=$((n + 1))
            [ $n -lt 600 ] || err "round $k not printed in 60 s"
            sleep 0.1
        done
        k=$((k + 1))
    done
    wait $tp
    trc=$?
    echo "--- tern track: exit $trc after $(($(date +%s) - t0)) s; stderr:"
    cat $W/track.err
    [ $trc -eq 0 ] || err "tern track exited $trc"
    awk '{ match($0, /"stopped_ms":[0-9.]+/); s = substr($0, RSTART + 13, RLENGTH - 13)
           match($0, /"collect_ms":[0-9.]+/); c = substr($0, RSTART + 13, RLENGTH - 13)
           match($0, /"round":[0-9]+/); r = substr($0, RSTART + 8, RLENGTH - 8)
           match($0, /"dirty_pages":[0-9]+/); d = substr($0, RSTART + 14, RLENGTH - 14)
           printf "round %s: %s dirty pages, collect %s ms, target stopped %s ms\n", r, d, c, s }' \
        $W/rounds.jsonl
fi
if [ -z "$fail" ]; then
    echo "--- sdcheck (buffer at $buf, regions from ${reg_0:-?} down):"
    sdcheck $W/rounds.jsonl $W/expect $NOISE > $W/check.out 2>&1
    crc=$?
    cat $W/check.out
    if [ $crc -ne 0 ]; then
        err "$(grep -m1 FAIL $W/check.out)"
        echo "--- rounds as reported:"
        cat $W/rounds.jsonl
    fi
fi
if [ -z "$fail" ]; then
    result soft-dirty-accuracy PASS
else
    result soft-dirty-accuracy "FAIL: $fail"
    echo "--- workload maps now:"
    cat /proc/$wl/maps 2> /dev/null
fi

# --- soft-dirty-untraced ------------------------------------------------------
fail=""
if [ ! -d /proc/$wl ]; then
    err "workload $wl is gone (stderr: $(cat $W/workload.err))"
else
    state=$(awk '$1 == "State:" { print $2 }' /proc/$wl/status)
    tracer=$(awk '$1 == "TracerPid:" { print $2 }' /proc/$wl/status)
    case "$state" in R | S) ;; *) err "workload state '$state', expected R or S" ;; esac
    [ "$tracer" = 0 ] || err "workload still traced by $tracer"
    ls -l /proc/$wl/fd > $W/fds 2>&1
    if grep -q -e anon_inode -e userfaultfd $W/fds; then err "fd left in the workload: $(cat $W/fds)"; fi
    if [ -z "$fail" ]; then
        cmd "w 1" && [ "$ans" = "ok 1" ] || err "workload answered '$ans' to w 1 after tracking"
    fi
fi
if [ -z "$fail" ]; then
    result soft-dirty-untraced PASS
else
    result soft-dirty-untraced "FAIL: $fail"
fi

# --- soft-dirty-auto ----------------------------------------------------------
# uffd-wp needs UFFD_FEATURE_WP_ASYNC (6.7+), so on this kernel auto must
# pick soft-dirty.
fail=""
if [ -d /proc/$wl ]; then
    tern track --pid $wl --tracker auto --rounds 1 --interval-ms 200 --json > $W/auto.jsonl 2> $W/auto.err
    arc=$?
    picked=$(awk 'match($0, /"tracker":"[a-z-]+"/) { print substr($0, RSTART + 11, RLENGTH - 12) }' $W/auto.jsonl)
    [ $arc -eq 0 ] || err "tern track --tracker auto exited $arc: $(cat $W/auto.err)"
    [ "$picked" = soft-dirty ] || err "auto picked '${picked:-nothing}' ($(cat $W/auto.err))"
    echo "--- tern track --tracker auto picked ${picked:-nothing}; $(head -c 300 $W/auto.err)"
else
    err "workload gone"
fi
if [ -z "$fail" ]; then
    result soft-dirty-auto PASS
else
    result soft-dirty-auto "FAIL: $fail"
fi

echo q >&3
exec 3>&- 4<&-
wait $wl 2> /dev/null
echo "VMTEST-DONE"
