# Checks what a benchmark binary prints (ctest, label bench; see bench/CMakeLists.txt). Usage:
#   cmake -DMODE=<mode> [-DKEYS=a,b] [-DCUDA=ON|OFF] -P check_output.cmake -- <binary> <args...>
# MODE json:         all of stdout is one JSON object whose context has every key of KEYS and
#                    whose benchmarks array is not empty and has no error
# MODE table:        the --table of a small shape: the dense row has a time; without a device the
#                    CUDA rows are one summary line (with one, they have times)
# MODE list_skipped: --table --list-skipped: the no-device skips are rows of their own again
# MODE cpu_skip:     a CPU case that rejects its shape keeps its own "skipped:" row
cmake_minimum_required(VERSION 3.19)  # string(JSON)

set(cmd)
set(after_dashes FALSE)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last})
  if(after_dashes)
    list(APPEND cmd "${CMAKE_ARGV${i}}")
  elseif(CMAKE_ARGV${i} STREQUAL "--")
    set(after_dashes TRUE)
  endif()
endforeach()
if(NOT cmd)
  message(FATAL_ERROR "no command after --")
endif()

execute_process(COMMAND ${cmd} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "exit code ${rc}\nstdout:\n${out}\nstderr:\n${err}")
endif()

function(expect regex what)
  if(NOT out MATCHES "${regex}")
    message(FATAL_ERROR "${what}: no match for \"${regex}\" in stdout:\n${out}")
  endif()
endfunction()
function(reject regex what)
  if(out MATCHES "${regex}")
    message(FATAL_ERROR "${what}: \"${CMAKE_MATCH_0}\" in stdout:\n${out}")
  endif()
endfunction()

set(no_device_row "skipped: [^\n]*no CUDA device")
set(summary "\nCUDA: no device \\([^\n]+\\); [0-9]+ device cases? skipped")

if(MODE STREQUAL "json")
  # string(JSON) ignores whatever follows the first value, so parse stdout as the first element of
  # an array with a sentinel after it: any stray text before or after the object breaks that.
  expect("^[ \t\r\n]*{" "stdout does not start with the JSON object")
  expect("}[ \t\r\n]*$" "stdout does not end with the JSON object")
  string(JSON n ERROR_VARIABLE json_err LENGTH "[${out}\n,0]")
  if(json_err OR NOT n EQUAL 2)
    message(FATAL_ERROR "stdout is not exactly one JSON value: ${json_err}\nstdout:\n${out}")
  endif()
  string(REPLACE "," ";" keys "${KEYS}")
  foreach(key IN LISTS keys)
    string(JSON value ERROR_VARIABLE json_err GET "${out}" context ${key})
    if(json_err OR value STREQUAL "")
      message(FATAL_ERROR "context has no \"${key}\": ${json_err}\nstdout:\n${out}")
    endif()
  endforeach()
  string(JSON count ERROR_VARIABLE json_err LENGTH "${out}" benchmarks)
  if(json_err OR count EQUAL 0)
    message(FATAL_ERROR "no benchmark in the JSON ${json_err}\nstdout:\n${out}")
  endif()
  string(JSON failed ERROR_VARIABLE json_err GET "${out}" benchmarks 0 error_occurred)
  if(NOT json_err AND failed)
    string(JSON why GET "${out}" benchmarks 0 error_message)
    message(FATAL_ERROR "the benchmark failed: ${why}")
  endif()
elseif(MODE STREQUAL "table")
  expect("\ndense_ffn/d=64/ff=256/tokens=7 +[0-9.]+ " "no timed dense row")
  expect("\nload average \\(1 min, at start\\): " "no load average in the header")
  expect("\nOpenMP threads: [0-9]+\n" "no thread count in the header")
  expect("median over interleaved runs" "the footnote does not say how vs dense is measured")
  # Device rows are never listed one by one unless asked to.
  reject("${no_device_row}" "a no-device skip has its own row without --list-skipped")
  if(CUDA AND NOT out MATCHES "${summary} \\(--list-skipped lists them\\)\n")
    # A machine with a device: then its rows have times.
    expect("\ncuda_dense_ffn_f32/d=64/ff=256/tokens=7 +[0-9.]+ "
           "neither the no-device summary line nor timed CUDA rows")
  endif()
  if(NOT CUDA)
    reject("CUDA: no device" "a CUDA summary line in a build without CUDA")
  endif()
elseif(MODE STREQUAL "list_skipped")
  if(out MATCHES "${summary}")
    expect("${summary} \\(listed above\\)\n" "the summary does not say the rows are listed")
    expect("\ncuda_dense_ffn_f32/d=64/ff=256/tokens=1 +${no_device_row}"
           "--list-skipped did not list the skipped device rows")
  else()
    expect("\ncuda_dense_ffn_f32/d=64/ff=256/tokens=1 +[0-9.]+ "
           "neither the no-device summary line nor timed CUDA rows")
  endif()
elseif(MODE STREQUAL "cpu_skip")
  expect("\nblockshuffle_32/d=66/ff=264/tokens=1 +skipped: [^\n]+"
         "a CPU case that rejects its shape has no row of its own")
  reject("${summary}" "a CPU skip was folded into the CUDA summary")
else()
  message(FATAL_ERROR "unknown MODE \"${MODE}\"")
endif()
