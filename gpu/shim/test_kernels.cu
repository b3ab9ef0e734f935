// Kernels that test the shim itself (compiled into the shim only, never by NVRTC).
#include "../../kernels/cuda/common.cuh"

// Reverses block b's slice x[b n .. b n + n) (n = blockDim.x <= 1024) through shared memory.
// With sync == 0 the barrier between the writes and the reads is missing: a thread may read a
// slot before its owner wrote it (and sees a previous block's value), which the shim must show
// as a wrong answer.
extern "C" __global__ void shim_test_reverse(float* x, int n, int sync) {
    __shared__ float buf[1024];
    const int t = threadIdx.x;
    x += (i64)blockIdx.x * n;
    buf[t] = x[t];
    if (sync) {
        __syncthreads();
    }
    x[t] = buf[n - 1 - t];
}

// A shuffle that only the odd threads reach while the even ones wait at __syncthreads: a
// deadlock on the GPU, which the shim must report (not hang).
extern "C" __global__ void shim_test_divergent(int* out) {
    const int t = threadIdx.x;
    if (t % 2 == 1) {
        out[t] = __shfl_xor_sync(FULL_MASK, t, 1);
    }
    __syncthreads();
    out[t] += 1;
}

// Each shuffle flavour once per lane, for a check against the CUDA semantics:
// out[4 t + 0] = xor 5, [1] = down 3 (own value past the end), [2] = broadcast of lane 7 + 100 * warp,
// [3] = warp_sum of the lane numbers.
extern "C" __global__ void shim_test_shuffle(int* out) {
    const int t = threadIdx.x;
    const int lane = t % 32;
    const int v = t;
    out[4 * t + 0] = __shfl_xor_sync(FULL_MASK, v, 5);
    out[4 * t + 1] = __shfl_down_sync(FULL_MASK, v, 3);
    out[4 * t + 2] = __shfl_sync(FULL_MASK, v + 100, 7);
    out[4 * t + 3] = (int)warp_sum((float)lane);
}
