// Deferred normalization (docs/math.md §7), both headers: RMSNormLinear and LayerNormLinear
// (ffnkit/norm_linear.hpp), SoftmaxLinear (ffnkit/softmax_v.hpp).
#pragma once

#include "ffnkit/norm_linear.hpp"
#include "ffnkit/softmax_v.hpp"
