#!/usr/bin/env bash
# Installs everything the test suite needs into the active Python environment: vlax with
# its [test] extra (which pulls [serve], [lerobot] and [sim]), the two test-only packages
# whose pins clash with ours, and (as root on Debian) the EGL libraries MuJoCo renders with.
# Used by the README's test command and by .ci/run, so the two stay the same.
set -euo pipefail
cd "$(dirname "$0")/.."

# Meta-World renders headless through EGL (Mesa llvmpipe).
if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]] \
    && ! ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa'; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
fi
# torch==2.13.0 (CPU) is pinned in the [test] extra.
python -m pip install -q -e '.[test]'
# Test-only, installed without their pins: openpi-client pins numpy<2 (it runs on numpy 2);
# lerobot-dataset pins torch/torchvision versions that clash with ours (its module-level
# torchvision import is stubbed in tests/e2e/test_lerobot_import.py).
python -m pip install -q --no-deps openpi-client==0.1.2 lerobot-dataset==0.4.4
