#!/bin/bash
# Station + outbox bench: `tirp station bench` (30 single studies, then 8 stations × 20) against a
# local tirpd whose results go to a dcmtk storescp; then how long the outbox needs to deliver the
# rest once the last flag is shown. Needs dcmtk. Numbers in firmware/STATION.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p tirp-host -p tirp-firmware --bins
B="$(cargo metadata -q --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
W="$(mktemp -d)"
mkdir -p "$W/pacs" "$W/data"
storescp -od "$W/pacs" -aet PACS 11290 > "$W/storescp.log" 2>&1 &
SP=$!
"$B/tirpd" --board boards/x86_64-dev.toml --data-dir "$W/data" --dicom-port 11288 \
  --http-addr 127.0.0.1:18288 --token benchtoken-0123456789 --dest PACS@127.0.0.1:11290 \
  --serial /nonexistent/tirp-bench > "$W/tirpd.out" 2> "$W/tirpd.err" &
TP=$!
trap 'kill $TP $SP 2>/dev/null || true' EXIT
sleep 2
"$B/tirp" station bench --to TIRPD@127.0.0.1:11288 --dashboard http://127.0.0.1:18288 \
  --token benchtoken-0123456789 --non-interactive --seed "$RANDOM"
echo "objects at the PACS when the bench ended: $(ls "$W/pacs" | wc -l)"
# Delivered once the count stops growing for 5 s.
last=-1; same=0
while [ "$same" -lt 25 ]; do
  n=$(ls "$W/pacs" | wc -l)
  if [ "$n" -eq "$last" ]; then same=$((same + 1)); else same=0; last=$n; fi
  sleep 0.2
done
flag=$(grep "study done" "$W/tirpd.err" | tail -1 | cut -c1-27)
sent=$(grep "result sent" "$W/tirpd.err" | tail -1 | cut -c1-27)
echo "objects delivered: $last; last flag $flag, last object sent $sent"
echo "studies sent to review: $(grep -c 'review=true' "$W/tirpd.err" || true); logs in $W"
