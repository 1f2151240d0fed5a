// The double-precision oracles (tests and verification only).
#pragma once

#include "ffnkit/reference/compare.hpp"
#include "ffnkit/reference/dense.hpp"
#include "ffnkit/reference/fff.hpp"
#include "ffnkit/reference/norm.hpp"
#include "ffnkit/reference/structured.hpp"
