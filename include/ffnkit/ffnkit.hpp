// Umbrella header: every layer family ffnkit provides.
#pragma once

#include "ffnkit/core.hpp"
#include "ffnkit/dense.hpp"
#include "ffnkit/fff.hpp"
#include "ffnkit/norm_linear.hpp"
#include "ffnkit/self_guided.hpp"
#include "ffnkit/softmax_v.hpp"
#include "ffnkit/structured.hpp"
