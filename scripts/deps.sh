# Sourced by scripts/bench and scripts/test: makes sure the Debian packages ffnkit builds with are
# installed. As root it installs what is missing; otherwise it prints the exact command and stops.
# `fortunes` is data, not a build dependency: the English text example 07 (a test) trains on.
FFNKIT_DEPS=(cmake make g++ libeigen3-dev libopenblas-openmp-dev libgtest-dev libbenchmark-dev
             libboost-context-dev fortunes)

ffnkit_ensure_deps() {
  local missing=()
  local pkg
  for pkg in "${FFNKIT_DEPS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "ffnkit: installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "ffnkit: missing packages: ${missing[*]}" >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}
