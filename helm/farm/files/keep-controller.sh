#!/bin/sh
# Keeps the farm controller running on the Ray head. `farm controller start` (over Ray Client)
# starts the named, detached actor or finds the one already running; Ray restarts the actor when
# its process dies, and this loop starts it again when it is gone for good (a new head pod, a
# `farm controller stop`). The check is the controller's own /metrics: the pod is ready while
# it answers. `farm controller start` has no foreground mode yet, hence the loop.
# Used by the Helm chart (a ConfigMap of the controller Deployment) and by deploy/compose.yaml.
# Environment: FARM_RAY_ADDRESS, FARM_METRICS_HOST, FARM_METRICS_PORT, FARM_CONTROLLER_CHECK_SECONDS,
# FARM_CONTROLLER_REPLACE_ON_START, and the settings `farm controller start` passes to the controller.
set -u
: "${FARM_CONTROLLER_CHECK_SECONDS:=30}"
url="http://${FARM_METRICS_HOST}:${FARM_METRICS_PORT}/metrics"
ready=/tmp/controller-ready
answers() {
  python3 - "$url" <<'PY'
import sys, urllib.request
try:
    body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
except Exception:
    sys.exit(1)
sys.exit(0 if "farm_controller_up 1.0" in body else 1)
PY
}
trap 'exit 0' TERM INT
if answers; then
  if [ "${FARM_CONTROLLER_REPLACE_ON_START:-false}" = "true" ]; then
    echo "controller running: replacing it so that it takes this pod's settings (running batches resume from the journal)"
    farm controller stop || true
  else
    echo "controller already running, with the settings it was started with (to apply this pod's: farm controller stop)"
  fi
fi
while :; do
  if answers; then
    touch "$ready"
  else
    rm -f "$ready"
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) no answer from $url: farm controller start"
    farm controller start || echo "farm controller start failed; next try in ${FARM_CONTROLLER_CHECK_SECONDS}s"
  fi
  sleep "${FARM_CONTROLLER_CHECK_SECONDS}" &
  wait $!
done
