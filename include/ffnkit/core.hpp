// Everything in core/: no Eigen, no CUDA.
#pragma once

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/backend.hpp"
#include "ffnkit/core/error.hpp"
#include "ffnkit/core/macros.hpp"
#include "ffnkit/core/params.hpp"
#include "ffnkit/core/rng.hpp"
#include "ffnkit/core/view.hpp"
