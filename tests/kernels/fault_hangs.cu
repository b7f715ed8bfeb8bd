// fault_hangs.cu — kernels that spin (issue 10, item 5). Broken: a thread that
// waits for a value no one writes, a block that waits for a later block's flag
// (CUDA does not promise that the blocks of a grid run at the same time). Valid on
// sm_70+ (independent thread scheduling), and they must finish on emu: a warp that
// waits for a flag another warp of its block sets later (volatile loads, atomics,
// plain loads of a volatile global), and lanes of one warp waiting for each other.
// Spinning lines are marked `// SPIN:name`.

// Thread `culprit` waits until flag[0] == 12345; nothing writes it.
extern "C" __global__ void wait_forever(const int* flag, int* out, int culprit) {
  if (threadIdx.x == culprit) {
    while (*(volatile const int*)flag != 12345) {  // SPIN:forever
    }
  }
  out[threadIdx.x] = 1;
}

// Block b waits for block b + 1's flag; the last block sets its own. With one OS
// thread in forward order block 0 spins first and for ever.
extern "C" __global__ void wait_for_next_block(int* flags) {
  const unsigned b = blockIdx.x;
  if (threadIdx.x == 0) {
    if (b + 1 < gridDim.x) {
      while (*(volatile int*)&flags[b + 1] == 0) {  // SPIN:next-block
      }
    }
    __threadfence();
    *(volatile int*)&flags[b] = 1;
  }
}

// Warp 0 waits on a volatile shared flag that warp 1 sets after writing a value.
extern "C" __global__ void cross_warp_volatile(float* y) {
  __shared__ volatile int ready;
  __shared__ float value;
  if (threadIdx.x == 0) ready = 0;
  __syncthreads();
  if (threadIdx.x < 32) {
    while (ready == 0) {  // SPIN:volatile
    }
    __threadfence_block();
    y[threadIdx.x] = value;
  } else if (threadIdx.x == 32) {
    value = 42.0f;
    __threadfence_block();
    ready = 1;
  }
}

// The same with atomics on a shared flag, and the producer last in the block.
extern "C" __global__ void cross_warp_atomic(float* y) {
  __shared__ int ready;
  __shared__ float value;
  if (threadIdx.x == 0) ready = 0;
  __syncthreads();
  const unsigned last = blockDim.x - 1;
  if (threadIdx.x < last) {
    while (atomicAdd(&ready, 0) == 0) {  // SPIN:atomic
    }
    __threadfence_block();
    y[threadIdx.x] = value + threadIdx.x;
  } else {
    value = 7.0f;
    __threadfence_block();
    atomicExch(&ready, 1);
  }
}

// A global flag (one block): warp 0 waits for warp 1's volatile store.
extern "C" __global__ void cross_warp_global(int* flag, int* out) {
  if (threadIdx.x < 32) {
    while (*(volatile int*)flag == 0) {  // SPIN:global
    }
    out[threadIdx.x] = *(volatile int*)flag;
  } else if (threadIdx.x == 63) {
    *(volatile int*)flag = 5;
  }
}

// Within one warp: lane 0 waits for lane 31 (valid with independent thread scheduling).
extern "C" __global__ void lane_waits_for_lane(int* out) {
  __shared__ volatile int token;
  if (threadIdx.x == 0) token = 0;
  __syncwarp();
  if (threadIdx.x == 0) {
    while (token != 31) {  // SPIN:lane
    }
    out[0] = token;
  } else if (threadIdx.x == 31) {
    token = 31;
  }
}
