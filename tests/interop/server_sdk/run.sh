#!/usr/bin/env bash
# Interop test: drive patchbay with Bandwidth's own, unmodified Python server
# SDK (bandwidth-sdk==14.5.3, module bandwidth.webrtc, Environment.CUSTOM).
#
# Usage (from anywhere):  tests/interop/server_sdk/run.sh [extra pytest args]
# Env:
#   PATCHBAY_BIN  path to the patchbay binary
#                 (default: target/debug/patchbay, relative to the repo root)
#   PYTHON        python used to create the venv (default: python3)
#
# Exits non-zero on any failure, and also when no test ran (or all skipped).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
cd "$ROOT"

SDK_VERSION="14.5.3"
PYTEST_VERSION="9.2.0"
VENV="$ROOT/tests/interop/.venv"
PYTHON="${PYTHON:-python3}"

PATCHBAY_BIN="${PATCHBAY_BIN:-target/debug/patchbay}"
case "$PATCHBAY_BIN" in
  /*) ;;
  *) PATCHBAY_BIN="$ROOT/$PATCHBAY_BIN" ;;
esac
if [ ! -x "$PATCHBAY_BIN" ]; then
  echo "server_sdk interop: patchbay binary not found or not executable: $PATCHBAY_BIN" >&2
  echo "  build it first (cargo build) or set PATCHBAY_BIN" >&2
  exit 1
fi
export PATCHBAY_BIN

# --- venv (reused when present) -------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# Reinstall only when the pinned set changes.
STAMP="$VENV/.server_sdk.stamp"
WANT="$( { cat "$HERE/requirements.txt"; echo "bandwidth-sdk==$SDK_VERSION"; echo "pytest==$PYTEST_VERSION"; } | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  # The SDK's own deps first (minus enum34, which breaks Python 3.11), then the
  # SDK with --no-deps so pip never pulls enum34 in.
  "$VPY" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt" "pytest==$PYTEST_VERSION"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps "bandwidth-sdk==$SDK_VERSION"
  # Guard: enum34 must not be present, and the SDK must import.
  if "$VPY" -m pip show enum34 >/dev/null 2>&1; then
    echo "server_sdk interop: enum34 is installed in $VENV; it breaks Python 3.11" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
"$VPY" -c "import bandwidth.webrtc.web_rtc_client, bandwidth.webrtc.controllers.api_controller" \
  || { echo "server_sdk interop: bandwidth SDK does not import" >&2; rm -f "$STAMP"; exit 1; }

# --- run --------------------------------------------------------------------
REPORT="$(mktemp -t server_sdk_junit.XXXXXX.xml)"
trap 'rm -f "$REPORT"' EXIT

set +e
"$VPY" -m pytest -q -p no:cacheprovider --junitxml="$REPORT" tests/interop/server_sdk "$@"
RC=$?
set -e
if [ "$RC" -ne 0 ]; then
  echo "server_sdk interop: pytest exited $RC" >&2
  exit "$RC"
fi

# pytest exits 0 when everything is skipped: refuse to call that a pass.
"$VPY" - "$REPORT" <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tests = sum(int(s.get("tests", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
ran = tests - skipped
if ran <= 0 or failed:
    print(f"server_sdk interop: no test actually ran (tests={tests}, skipped={skipped}, failed={failed})",
          file=sys.stderr)
    sys.exit(1)
print(f"server_sdk interop: {ran} passed, 0 failed")
PY
