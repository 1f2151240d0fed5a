#!/bin/sh
# Run by ctest (fuzz/CMakeLists.txt): build the libFuzzer target with clang, then fuzz the
# safetensors reader for SECONDS under ASan and UBSan. Exit 77 (skip) when clang cannot build it.
# Usage: run_fuzz.sh CLANGXX SOURCE_DIR WORK_DIR SECONDS [JSON_INCLUDE_DIR...]
set -u
clangxx=$1 src=$2 work=$3 seconds=$4
shift 4
includes=""
for d in "$@"; do includes="$includes -isystem $d"; done
mkdir -p "$work/corpus" || exit 1
cd "$work" || exit 1
# shellcheck disable=SC2086
if ! "$clangxx" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$src/include" $includes "$src/fuzz/safetensors_fuzz.cpp" \
    "$src/src/io/safetensors.cpp" -o "$work/safetensors_fuzz"; then
  # A clang without the libFuzzer runtime (libclang_rt.fuzzer) is not a failure of ffnkit.
  echo "SKIP: $clangxx could not build the libFuzzer target"
  exit 77
fi
# New inputs go to the scratch corpus; the checked-in seeds are only read.
"$work/safetensors_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len=4096 -print_final_stats=1 -dict="$src/fuzz/safetensors.dict" "$work/corpus" \
  "$src/fuzz/corpus" || {
  echo "safetensors_fuzz found a failure; the input is $work/crash-* (or leak-*/timeout-*)"
  exit 1
}
echo "safetensors_fuzz: ${seconds} s clean"
