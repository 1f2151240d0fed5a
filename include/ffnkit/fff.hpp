// Fast feedforward (FFF, docs/math.md §6): K binary trees of depth D, each node a neuron with
// w_in[n], b_in[n] and w_out[n]; a token walks one root-to-leaf path per tree and touches K (D+1)
// of the K (2^(D+1) − 1) neurons. Hard-routed inference (λ > 0 goes right, a tie goes left) and
// UltraFastBERT-style training (gradients for the visited nodes only).
#pragma once

#include "ffnkit/core.hpp"

namespace ffnkit {

template <class T, class Backend = Cpu>
class FastFeedForward;

// Which CPU forward kernel runs: chosen by token count (kAuto), or forced (tests, benchmarks).
enum class FffKernel : int {
  kAuto = 0,
  kPerToken,  // latency-bound walk, one token at a time (few tokens)
  kGrouped,   // tokens grouped by node per level, weight rows reused across a group (many tokens)
};

}  // namespace ffnkit

#include "ffnkit/cpu/fff.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/fff.hpp"
#endif
