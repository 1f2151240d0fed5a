// Umbrella header: every layer family ffnkit provides.
#pragma once

#include "ffnkit/core.hpp"
#include "ffnkit/dense.hpp"
#include "ffnkit/fff.hpp"
#include "ffnkit/norm.hpp"
#include "ffnkit/self_guided.hpp"
#include "ffnkit/structured.hpp"
