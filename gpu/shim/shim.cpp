// The host shim: runs kernels/cuda/*.cu on the CPU, for tests on machines without a GPU.
//
// One C entry point, cascade_shim_launch, shaped like cuLaunchKernel: the kernel by name, grid
// and block sizes, dynamic shared bytes (must be 0: the kernels use static shared arrays only),
// and args[i] pointing at the i-th argument's value ("device" pointers are host pointers here).
// Launches run one at a time (a process-wide lock: `__shared__` arrays are statics). In a
// launch, a pool of OS threads, one per CUDA thread of a block, runs the blocks in order.
#include "cuda_shim.hpp"

#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "../../kernels/cuda/attention.cu"
#include "../../kernels/cuda/elementwise.cu"
#include "../../kernels/cuda/get_rows.cu"
#include "../../kernels/cuda/mmq.cu"
#include "../../kernels/cuda/mmvq.cu"
#include "../../kernels/cuda/mv.cu"
#include "../../kernels/cuda/quantize.cu"
#include "../../kernels/cuda/sample.cu"
#include "test_kernels.cu"

namespace cascade_shim {

// ---- the dispatch table ----------------------------------------------------------------------

// Copies the arguments out of args (as cuLaunchKernel does at launch) and returns the call.
template <class... A, std::size_t... I>
std::function<void()> bind_args(void (*f)(A...), void** args, std::index_sequence<I...>) {
    std::tuple<std::decay_t<A>...> vals{*static_cast<std::decay_t<A>*>(args[I])...};
    return [f, vals]() { std::apply(f, vals); };
}

struct Entry {
    std::string_view name;
    std::function<std::function<void()>(void**)> bind;
};

template <class... A>
Entry entry(std::string_view name, void (*f)(A...)) {
    return Entry{name, [f](void** args) { return bind_args(f, args, std::index_sequence_for<A...>{}); }};
}

#define KERNEL(k) entry(#k, &k)

const std::vector<Entry>& table() {
    static const std::vector<Entry> t = {
        KERNEL(quantize_q8_1),
        KERNEL(mmvq_q4_0), KERNEL(mmvq_q4_1), KERNEL(mmvq_q5_0),
        KERNEL(mmvq_q8_0), KERNEL(mmvq_q4_k), KERNEL(mmvq_q6_k),
        KERNEL(mmq_q4_0), KERNEL(mmq_q4_1), KERNEL(mmq_q5_0),
        KERNEL(mmq_q8_0), KERNEL(mmq_q4_k), KERNEL(mmq_q6_k),
        KERNEL(mv_f32), KERNEL(mv_f16), KERNEL(mv_bf16),
        KERNEL(rms_norm), KERNEL(add_bias), KERNEL(add_inplace), KERNEL(silu_mul), KERNEL(rope),
        KERNEL(get_rows_f32), KERNEL(get_rows_f16), KERNEL(get_rows_bf16),
        KERNEL(get_rows_q4_0), KERNEL(get_rows_q4_1), KERNEL(get_rows_q5_0),
        KERNEL(get_rows_q8_0), KERNEL(get_rows_q4_k), KERNEL(get_rows_q6_k),
        KERNEL(kv_store), KERNEL(attention_paged), KERNEL(attention_paged_split),
        KERNEL(attention_combine),
        KERNEL(argmax_rows), KERNEL(topk_rows),
        KERNEL(shim_test_reverse), KERNEL(shim_test_shuffle),
    };
    return t;
}

// ---- running a launch ------------------------------------------------------------------------

struct Job;

// Runs when every thread has finished a block: fresh barriers for the next one (the finished
// block's threads dropped out of the old ones).
struct Reset {
    Job* job;
    void operator()() noexcept;
};

struct Job {
    std::function<void()> body;
    dim3 grid, block;
    unsigned nthreads = 0;
    unsigned nwarps = 0;
    uint64_t nblocks = 0;
    std::optional<std::barrier<>> block_bar;
    std::unique_ptr<Warp[]> warps;
    std::optional<std::barrier<Reset>> end_bar;

    unsigned warp_lanes(unsigned w) const {
        const unsigned rest = nthreads - w * 32;
        return rest < 32 ? rest : 32;
    }
    void fresh_barriers() {
        block_bar.emplace(nthreads);
        for (unsigned w = 0; w < nwarps; ++w) {
            warps[w].bar.emplace(warp_lanes(w));
        }
    }
};

void Reset::operator()() noexcept { job->fresh_barriers(); }

void run_thread(Job& job, unsigned tid) {
    const dim3 b = job.block;
    threadIdx = dim3{tid % b.x, (tid / b.x) % b.y, tid / (b.x * b.y)};
    blockDim = job.block;
    gridDim = job.grid;
    const uint64_t gx = job.grid.x, gy = job.grid.y;
    for (uint64_t blk = 0; blk < job.nblocks; ++blk) {
        blockIdx = dim3{(unsigned)(blk % gx), (unsigned)((blk / gx) % gy), (unsigned)(blk / (gx * gy))};
        ThreadState& s = t_state;
        s.block_bar = &*job.block_bar;
        s.warp = &job.warps[tid / 32];
        s.lane = tid % 32;
        s.warp_size = job.warp_lanes(tid / 32);
        s.parity = 0;
        job.body();
        s.block_bar->arrive_and_drop();
        s.warp->bar->arrive_and_drop();
        job.end_bar->arrive_and_wait();
    }
}

// Persistent workers; a launch uses the first `nthreads` of them (the pool grows as needed).
class Pool {
public:
    void run(Job& job) {
        std::unique_lock<std::mutex> lk(m_);
        while (threads_.size() < job.nthreads) {
            const unsigned id = (unsigned)threads_.size();
            // A new worker starts at the current generation: the job announced below is new to it.
            threads_.emplace_back([this, id, g = generation_] { worker(id, g); });
        }
        job_ = &job;
        pending_ = (unsigned)threads_.size();
        ++generation_;
        cv_.notify_all();
        done_.wait(lk, [this] { return pending_ == 0; });
        job_ = nullptr;
    }

    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(m_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) {
            t.join();
        }
    }

private:
    void worker(unsigned id, uint64_t seen) {
        for (;;) {
            Job* job;
            {
                std::unique_lock<std::mutex> lk(m_);
                cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
                if (stop_) {
                    return;
                }
                seen = generation_;
                job = job_;
            }
            if (id < job->nthreads) {
                run_thread(*job, id);
            }
            std::lock_guard<std::mutex> lk(m_);
            if (--pending_ == 0) {
                done_.notify_all();
            }
        }
    }

    std::mutex m_;
    std::condition_variable cv_, done_;
    std::vector<std::thread> threads_;
    Job* job_ = nullptr;
    unsigned pending_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
};

std::mutex& launch_lock() {
    static std::mutex m;
    return m;
}

Pool& pool() {
    static Pool p;
    return p;
}

}  // namespace cascade_shim

// Return codes: 0 done; 1 unknown kernel; 2 bad geometry (a zero grid or block dimension, more
// than 1024 threads per block); 3 dynamic shared memory asked for (the kernels have none);
// 4 an exception (out of memory, threads).
extern "C" int cascade_shim_launch(const char* kernel_name, const unsigned grid[3],
                                   const unsigned block[3], unsigned shared_bytes, void** args) {
    using namespace cascade_shim;
    if (kernel_name == nullptr) {
        return 1;
    }
    const std::string_view name(kernel_name);
    const Entry* e = nullptr;
    for (const Entry& t : table()) {
        if (t.name == name) {
            e = &t;
            break;
        }
    }
    if (e == nullptr) {
        return 1;
    }
    const uint64_t nthreads = (uint64_t)block[0] * block[1] * block[2];
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || nthreads == 0 || nthreads > 1024) {
        return 2;
    }
    if (shared_bytes != 0) {
        return 3;
    }
    try {
        std::lock_guard<std::mutex> lk(launch_lock());
        Job job;
        job.body = e->bind(args);
        job.grid = dim3{grid[0], grid[1], grid[2]};
        job.block = dim3{block[0], block[1], block[2]};
        job.nthreads = (unsigned)nthreads;
        job.nwarps = (job.nthreads + 31) / 32;
        job.nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
        job.warps.reset(new Warp[job.nwarps]);
        job.fresh_barriers();
        job.end_bar.emplace(job.nthreads, Reset{&job});
        pool().run(job);
    } catch (...) {
        return 4;
    }
    return 0;
}
