# Sourced by scripts/bench and scripts/test: makes sure the Debian packages ffnkit builds with are
# installed. As root it installs what is missing; otherwise it prints the exact command and stops.
# `fortunes` is data, not a build dependency: the English text example 07 (a test) trains on.
# `clang` builds the libFuzzer target the safetensors_fuzz test runs (libFuzzer ships with it).
# The presets build with Ninja (it keeps both cores busy across targets, where make waited on each
# library before compiling what uses it); `make` stays for the package test's consumer.
FFNKIT_DEPS=(cmake ninja-build make g++ libeigen3-dev libopenblas-openmp-dev libgtest-dev libbenchmark-dev
             libboost-context-dev nlohmann-json3-dev clang fortunes)

ffnkit_ensure_deps() {
  local missing=()
  local pkg
  for pkg in "${FFNKIT_DEPS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    ffnkit_ensure_python_interop
    return 0
  fi
  if [ "$(id -u)" -eq 0 ]; then
    echo "ffnkit: installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ffnkit_ensure_python_interop
  else
    echo "ffnkit: missing packages: ${missing[*]}" >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

# Optional: Python's safetensors and numpy, for the safetensors interop test (which skips without
# them). Installed with pip from PyPI into whichever python3 is on PATH; any failure (no network,
# no pip, an externally managed Python refusing) only prints a note and never fails the caller.
ffnkit_ensure_python_interop() {
  command -v python3 >/dev/null 2>&1 || return 0
  python3 -c "import safetensors, numpy" >/dev/null 2>&1 && return 0
  local pip=(python3 -m pip install --quiet --disable-pip-version-check --timeout 20 --retries 1)
  echo "ffnkit: installing Python's safetensors and numpy for the interop test (optional)"
  if ! "${pip[@]}" safetensors numpy >/dev/null 2>&1 &&
     ! "${pip[@]}" --break-system-packages safetensors numpy >/dev/null 2>&1; then
    echo "ffnkit: could not pip-install safetensors/numpy; the interop test will be skipped" >&2
  fi
  return 0
}

# Configures CMake preset $1. A build directory configured earlier with another generator (the
# presets used make before Ninja) is reset first, since CMake refuses to switch generators in place.
ffnkit_configure() {
  local cache="build/$1/CMakeCache.txt"
  if [ -f "$cache" ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$cache"; then
    echo "ffnkit: build/$1 was configured with another generator; resetting its CMake cache"
    rm -rf "$cache" "build/$1/CMakeFiles"
  fi
  cmake --preset "$1"
}
