#!/usr/bin/env bash
# scripts/stop.sh: stop the cluster and fake gateway left by scripts/demo.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rig_stop
echo "stopped"
