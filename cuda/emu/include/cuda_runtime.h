// Shadow of CUDA's <cuda_runtime.h> for the CPU emulator (cuda/emu): the kernels compile as ordinary C++.
#pragma once
#include "cmir_emu.h"
