// The host shim: runs kernels/cuda/*.cu on the CPU, for tests on machines without a GPU.
//
// One C entry point, cascade_shim_launch, shaped like cuLaunchKernel: the kernel by name, grid
// and block sizes, dynamic shared bytes (must be 0: the kernels use static shared arrays only),
// and args[i] pointing at the i-th argument's value ("device" pointers are host pointers here).
//
// A block runs on one OS thread, its CUDA threads as fibers (cuda_shim.hpp): each has its own
// stack, and a user-space context switch passes control from a fiber that stops at a barrier to
// the next ready one. The blocks of a launch go to the calling thread and, when they are free,
// to a few helper threads (one per core), each taking the next block until none is left; each
// OS thread has its own `__shared__` arrays (thread_local) and its own fibers and stacks,
// allocated once and reused. Launches from different threads run at the same time (only one
// of them gets the helpers).
//
// Scheduling (deterministic for a given launch): a FIFO of ready fibers; a fiber runs until it
// stops at a barrier or returns, then the next in the FIFO runs; when a barrier opens, its
// waiters join the FIFO in thread order. The order alternates between blocks: forward (thread
// 0 first) when launch number + linear block index is even, backward when odd. So a missing
// __syncthreads shows whichever thread writes what another reads: without the barrier, in
// every block of one order the readers of higher threads' slots run first and see stale
// shared memory, and in the blocks of the other order the readers of lower threads' slots.
//
// ThreadSanitizer (gpu/shim/tsan-check) sees the fibers as threads through its fiber API: the
// switches carry no synchronization, the barriers do (release at arrival, acquire when
// passing), so it reports shared-memory races that a missing barrier leaves.
#include "cuda_shim.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define CASCADE_SHIM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CASCADE_SHIM_TSAN 1
#endif
#endif

#if defined(CASCADE_SHIM_TSAN)
#include <sanitizer/tsan_interface.h>
// The scheduler's own bookkeeping is shared by the fibers of a block without synchronization
// (they never run at the same time): not instrumented, so that TSan checks the kernels' memory.
#define CASCADE_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define CASCADE_NO_TSAN
#endif

#if !defined(__x86_64__) || defined(CASCADE_SHIM_UCONTEXT)
#define CASCADE_SHIM_USE_UCONTEXT 1
#include <ucontext.h>
#endif

#include "../../kernels/cuda/attention.cu"
#include "../../kernels/cuda/elementwise.cu"
#include "../../kernels/cuda/get_rows.cu"
#include "../../kernels/cuda/mmq.cu"
#include "../../kernels/cuda/mmq_mma.cu"
#include "../../kernels/cuda/mmvq.cu"
#include "../../kernels/cuda/mv.cu"
#include "../../kernels/cuda/quantize.cu"
#include "../../kernels/cuda/sample.cu"
#include "../../kernels/cuda/subset.cu"
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
        KERNEL(mmq_mma_q4_0), KERNEL(mmq_mma_q4_1), KERNEL(mmq_mma_q5_0),
        KERNEL(mmq_mma_q8_0), KERNEL(mmq_mma_q4_k), KERNEL(mmq_mma_q6_k),
        KERNEL(mv_f32), KERNEL(mv_f16), KERNEL(mv_bf16),
        KERNEL(rms_norm), KERNEL(add_bias), KERNEL(add_inplace), KERNEL(copy_f32), KERNEL(silu_mul), KERNEL(rope),
        KERNEL(get_rows_f32), KERNEL(get_rows_f16), KERNEL(get_rows_bf16),
        KERNEL(get_rows_q4_0), KERNEL(get_rows_q4_1), KERNEL(get_rows_q5_0),
        KERNEL(get_rows_q8_0), KERNEL(get_rows_q4_k), KERNEL(get_rows_q6_k),
        KERNEL(kv_store), KERNEL(attention_paged), KERNEL(attention_paged_split),
        KERNEL(attention_combine),
        KERNEL(argmax_rows), KERNEL(topk_rows),
        KERNEL(gather_bytes), KERNEL(scatter_logits),
        KERNEL(shim_test_reverse), KERNEL(shim_test_shuffle), KERNEL(shim_test_divergent),
        KERNEL(mma_probe),
    };
    return t;
}

// ---- context switch ----------------------------------------------------------------------

#if defined(CASCADE_SHIM_USE_UCONTEXT)

struct Context {
    ucontext_t uc;
};

inline void ctx_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void ctx_init(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}

#else

// x86-64 System V. Pushes the callee-saved registers (rbp, rbx, r12-r15) and the callee-saved
// floating-point control state (MXCSR, the x87 control word) on the current stack, stores the
// stack pointer to *save, switches to the stack at `load` and pops the same from there. The
// caller-saved registers are the compiler's to keep across the call, as for any call.
// (swapcontext does the same plus a sigprocmask system call per switch.)
extern "C" void cascade_shim_switch(void** save, void* load);
asm(R"(
    .pushsection .text
    .p2align 4
    .globl cascade_shim_switch
    .hidden cascade_shim_switch
    .type cascade_shim_switch, @function
cascade_shim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cascade_shim_switch, .-cascade_shim_switch
    .popsection
)");

struct Context {
    void* sp = nullptr;
};

inline void ctx_switch(Context& from, Context& to) { cascade_shim_switch(&from.sp, to.sp); }

// A fresh stack whose first switch "returns" into entry as if it had been called: the frame
// cascade_shim_switch pops (MXCSR and control word as now, zero registers), then entry's
// address, then a null return address for entry (which never returns), 16-byte aligned so that
// rsp + 8 is a multiple of 16 at entry's first instruction.
void ctx_init(Context& c, char* stack, size_t bytes, void (*entry)()) {
    const uintptr_t top = ((uintptr_t)(stack + bytes)) & ~(uintptr_t)15;
    uint64_t* s = (uint64_t*)top;
    s[-1] = 0;
    s[-2] = (uint64_t)(uintptr_t)entry;
    uint64_t* sp = s - 9;  // the control word slot and six registers below entry's address
    for (int i = 1; i <= 6; ++i) {
        sp[i] = 0;
    }
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = 0;
    std::memcpy((char*)sp, &mxcsr, 4);
    std::memcpy((char*)sp + 4, &fpucw, 2);
    c.sp = sp;
}

#endif

#if defined(CASCADE_SHIM_TSAN)
inline void tsan_release(void* a) { __tsan_release(a); }
inline void tsan_acquire(void* a) { __tsan_acquire(a); }
#else
inline void tsan_release(void*) {}
inline void tsan_acquire(void*) {}
#endif

// ---- fibers ----------------------------------------------------------------------------------

// Far more than the kernels need (the deepest fiber stack over the tests reaches under 1 KiB,
// libm calls included; TSan builds take more); only the pages a fiber touches are ever backed. A guard page below each stack turns an overflow into a
// fault instead of silent corruption.
constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned kMaxThreads = 1024;

void fiber_entry();

struct Fiber {
    enum State : uint8_t { kReady, kAtBlock, kAtWarp, kDone };

    Context ctx;
    Lane lane;
    dim3 tid;
    State state = kDone;
    char* map = nullptr;
    size_t map_bytes = 0;
#if defined(CASCADE_SHIM_TSAN)
    void* tsan = nullptr;
#endif

    Fiber() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        map_bytes = kStackBytes + page;
        void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (m == MAP_FAILED) {
            throw std::bad_alloc();
        }
        map = (char*)m;
        mprotect(map, page, PROT_NONE);
        restart();
    }

    // A fresh context at fiber_entry (a new fiber, or one whose kernel deadlocked).
    void restart() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        ctx_init(ctx, map + page, map_bytes - page, fiber_entry);
#if defined(CASCADE_SHIM_TSAN)
        if (tsan != nullptr) {
            __tsan_destroy_fiber(tsan);
        }
        tsan = __tsan_create_fiber(0);
#endif
        state = kDone;
    }

    ~Fiber() {
#if defined(CASCADE_SHIM_TSAN)
        __tsan_destroy_fiber(tsan);
#endif
        munmap(map, map_bytes);
    }

    Fiber(const Fiber&) = delete;
    Fiber& operator=(const Fiber&) = delete;
};

struct Launch {
    std::function<void()> body;
    dim3 grid, block;
    unsigned nthreads = 0;
    uint64_t nblocks = 0;
    uint64_t seq = 0;                   // the launch's number (the scheduling order)
    std::atomic<uint64_t> next{0};      // the next block to take
    std::atomic<int> status{0};         // the first failure (a return code of the launch)
};

// One OS thread's scheduler: its fibers and the state of the block it runs.
struct Worker {
    Context sched;  // the OS thread's own stack, where run_block waits for the block's end
    std::vector<std::unique_ptr<Fiber>> fibers;
    Fiber* cur = nullptr;
    Fiber* queue[kMaxThreads];  // ready fibers, a ring
    unsigned qhead = 0, qcount = 0;
    unsigned n = 0;             // threads per block
    bool reverse = false;       // this block's order
    unsigned block_arrived = 0;
    unsigned block_live = 0;
    unsigned done = 0;
    Warp warps[kMaxThreads / 32];
    const std::function<void()>* body = nullptr;
    bool threw = false;
#if defined(CASCADE_SHIM_TSAN)
    void* sched_tsan = nullptr;
#endif
    // Addresses for TSan's happens-before annotations.
    char sync_block_start = 0, sync_block_end = 0, sync_barrier = 0;
};

inline thread_local Worker* t_worker = nullptr;

Worker& this_worker() {
    thread_local std::unique_ptr<Worker> owner;
    if (!owner) {
        owner = std::make_unique<Worker>();
        t_worker = owner.get();
    }
    return *owner;
}

CASCADE_NO_TSAN inline void push(Worker& w, Fiber* f) {
    f->state = Fiber::kReady;
    w.queue[(w.qhead + w.qcount) % kMaxThreads] = f;
    ++w.qcount;
}

CASCADE_NO_TSAN inline Fiber* pop(Worker& w) {
    if (w.qcount == 0) {
        return nullptr;
    }
    Fiber* f = w.queue[w.qhead];
    w.qhead = (w.qhead + 1) % kMaxThreads;
    --w.qcount;
    return f;
}

// Makes f the running fiber (before switching to it).
CASCADE_NO_TSAN inline void enter(Worker& w, Fiber* f) {
    w.cur = f;
    threadIdx = f->tid;
    t_lane = &f->lane;
}

// Threads first..first + count in this block's order, those in state s made ready.
CASCADE_NO_TSAN void release(Worker& w, unsigned first, unsigned count, Fiber::State s) {
    for (unsigned k = 0; k < count; ++k) {
        Fiber* f = w.fibers[w.reverse ? first + count - 1 - k : first + k].get();
        if (f->state == s) {
            push(w, f);
        }
    }
}

CASCADE_NO_TSAN void release_block(Worker& w) {
    w.block_arrived = 0;
    release(w, 0, w.n, Fiber::kAtBlock);
}

CASCADE_NO_TSAN void release_warp(Worker& w, Warp& wp) {
    wp.arrived = 0;
    const unsigned first = (unsigned)(&wp - w.warps) * 32;
    const unsigned count = w.n - first < 32 ? w.n - first : 32;
    release(w, first, count, Fiber::kAtWarp);
}

// f has stopped (its state says why): on to the next ready fiber, or back to run_block when
// there is none (the block is over, or deadlocked). Returns when f runs again.
CASCADE_NO_TSAN void switch_away(Worker& w, Fiber* f) {
    Fiber* next = pop(w);
    if (next == f) {
        return;  // released and first in line: carry on
    }
    if (next == nullptr) {
        w.cur = nullptr;
#if defined(CASCADE_SHIM_TSAN)
        __tsan_switch_to_fiber(w.sched_tsan, __tsan_switch_to_fiber_no_sync);
#endif
        ctx_switch(f->ctx, w.sched);
    } else {
        enter(w, next);
#if defined(CASCADE_SHIM_TSAN)
        __tsan_switch_to_fiber(next->tsan, __tsan_switch_to_fiber_no_sync);
#endif
        ctx_switch(f->ctx, next->ctx);
    }
}

CASCADE_NO_TSAN void block_barrier() {
    Worker& w = *t_worker;
    Fiber* f = w.cur;
    tsan_release(&w.sync_barrier);
    f->state = Fiber::kAtBlock;
    if (++w.block_arrived == w.block_live) {
        release_block(w);
    }
    switch_away(w, f);
    tsan_acquire(&w.sync_barrier);
}

CASCADE_NO_TSAN void warp_barrier() {
    Worker& w = *t_worker;
    Fiber* f = w.cur;
    Warp& wp = *f->lane.warp;
    tsan_release(&wp.arrived);
    f->state = Fiber::kAtWarp;
    if (++wp.arrived == wp.live) {
        release_warp(w, wp);
    }
    switch_away(w, f);
    tsan_acquire(&wp.arrived);
}

// f has returned from the kernel: it drops out of its block's and its warp's barriers.
CASCADE_NO_TSAN void finish(Worker& w, Fiber* f) {
    tsan_release(&w.sync_block_end);
    f->state = Fiber::kDone;
    ++w.done;
    --w.block_live;
    if (w.block_arrived > 0 && w.block_arrived == w.block_live) {
        release_block(w);
    }
    Warp& wp = *f->lane.warp;
    --wp.live;
    if (wp.arrived > 0 && wp.arrived == wp.live) {
        release_warp(w, wp);
    }
    switch_away(w, f);
}

// Every fiber's life: the kernel once per block, for ever (run_block makes it ready again).
void fiber_entry() {
    for (;;) {
        Worker& w = *t_worker;
        tsan_acquire(&w.sync_block_start);
        try {
            (*w.body)();
        } catch (...) {
            w.threw = true;
        }
        finish(w, w.cur);
    }
}

unsigned warp_lanes(unsigned n, unsigned warp) {
    const unsigned rest = n - warp * 32;
    return rest < 32 ? rest : 32;
}

// Fibers for a launch's block shape.
void prepare(Worker& w, const Launch& L) {
    while (w.fibers.size() < L.nthreads) {
        w.fibers.push_back(std::make_unique<Fiber>());
    }
    const dim3 b = L.block;
    w.n = L.nthreads;
    for (unsigned i = 0; i < w.n; ++i) {
        Fiber& f = *w.fibers[i];
        f.tid = dim3{i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
        f.lane.warp = &w.warps[i / 32];
        f.lane.lane = i % 32;
        f.lane.warp_size = warp_lanes(w.n, i / 32);
    }
    w.body = &L.body;
    w.threw = false;
    blockDim = L.block;
    gridDim = L.grid;
}

// Runs block blk on this OS thread; returns 0, or the launch's failure code.
CASCADE_NO_TSAN int run_block(Worker& w, const Launch& L, uint64_t blk) {
    const uint64_t gx = L.grid.x, gy = L.grid.y;
    blockIdx = dim3{(unsigned)(blk % gx), (unsigned)((blk / gx) % gy), (unsigned)(blk / (gx * gy))};
    w.reverse = ((L.seq + blk) & 1) != 0;
    w.block_arrived = 0;
    w.block_live = w.n;
    w.done = 0;
    for (unsigned k = 0; k * 32 < w.n; ++k) {
        w.warps[k].arrived = 0;
        w.warps[k].live = warp_lanes(w.n, k);
    }
    w.qhead = 0;
    w.qcount = 0;
    for (unsigned i = 0; i < w.n; ++i) {
        w.fibers[i]->lane.parity = 0;
    }
    release(w, 0, w.n, Fiber::kDone);
    tsan_release(&w.sync_block_start);
    Fiber* first = pop(w);
    enter(w, first);
#if defined(CASCADE_SHIM_TSAN)
    w.sched_tsan = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(first->tsan, 0);
#endif
    ctx_switch(w.sched, first->ctx);
    tsan_acquire(&w.sync_block_end);
    if (w.done != w.n) {
        // Deadlock: the stopped fibers' kernels are abandoned (their frames hold plain values).
        for (unsigned i = 0; i < w.n; ++i) {
            if (w.fibers[i]->state != Fiber::kDone) {
                w.fibers[i]->restart();
            }
        }
        return w.threw ? 4 : 5;
    }
    return w.threw ? 4 : 0;
}

void fail(Launch& L, int rc) {
    int none = 0;
    L.status.compare_exchange_strong(none, rc);
}

// Takes blocks of L until none is left (or the launch failed).
void run_blocks(Launch& L) {
    try {
        Worker& w = this_worker();
        prepare(w, L);
        while (L.status.load(std::memory_order_relaxed) == 0) {
            const uint64_t blk = L.next.fetch_add(1, std::memory_order_relaxed);
            if (blk >= L.nblocks) {
                break;
            }
            const int rc = run_block(w, L, blk);
            if (rc != 0) {
                fail(L, rc);
            }
        }
    } catch (...) {
        fail(L, 4);
    }
}

// Helper threads that take blocks of a launch alongside the calling thread: one per core
// beyond the first, or CASCADE_SHIM_THREADS - 1. One launch at a time uses them; a launch that
// finds them busy runs on its own thread.
class Helpers {
public:
    void run(Launch& L) {
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (!busy.owns_lock() || L.nblocks < 2 || count() == 0) {
            run_blocks(L);
            return;
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            while (threads_.size() < count()) {
                threads_.emplace_back([this, g = generation_] { helper(g); });
            }
            job_ = &L;
            ++generation_;
        }
        cv_.notify_all();
        run_blocks(L);
        // Helpers that have not picked the launch up yet never will; wait for those that did.
        std::unique_lock<std::mutex> lk(m_);
        job_ = nullptr;
        done_.wait(lk, [this] { return active_ == 0; });
    }

    ~Helpers() {
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
    static unsigned count() {
        static const unsigned n = [] {
            unsigned total = std::thread::hardware_concurrency();
            if (const char* e = std::getenv("CASCADE_SHIM_THREADS"); e != nullptr && *e != 0) {
                total = (unsigned)std::strtoul(e, nullptr, 10);
            }
            total = total < 1 ? 1 : (total > 64 ? 64 : total);
            return total - 1;
        }();
        return n;
    }

    void helper(uint64_t seen) {
        for (;;) {
            Launch* job;
            {
                std::unique_lock<std::mutex> lk(m_);
                cv_.wait(lk, [&] { return stop_ || (job_ != nullptr && generation_ != seen); });
                if (stop_) {
                    return;
                }
                seen = generation_;
                job = job_;
                ++active_;
            }
            run_blocks(*job);
            std::lock_guard<std::mutex> lk(m_);
            if (--active_ == 0) {
                done_.notify_all();
            }
        }
    }

    std::mutex busy_;  // held by the launch that uses the helpers
    std::mutex m_;
    std::condition_variable cv_, done_;
    std::vector<std::thread> threads_;
    Launch* job_ = nullptr;
    unsigned active_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
};

Helpers& helpers() {
    static Helpers h;
    return h;
}

std::atomic<uint64_t> launch_count{0};

}  // namespace cascade_shim

// Return codes: 0 done; 1 unknown kernel; 2 bad geometry (a zero grid or block dimension, more
// than 1024 threads per block); 3 dynamic shared memory asked for (the kernels have none);
// 4 an exception (out of memory, threads); 5 a deadlock: a __syncthreads or warp shuffle that
// not every live thread of the block (lane of the warp) reached.
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
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || nthreads == 0 || nthreads > kMaxThreads) {
        return 2;
    }
    if (shared_bytes != 0) {
        return 3;
    }
    try {
        Launch L;
        L.body = e->bind(args);
        L.grid = dim3{grid[0], grid[1], grid[2]};
        L.block = dim3{block[0], block[1], block[2]};
        L.nthreads = (unsigned)nthreads;
        L.nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
        L.seq = launch_count.fetch_add(1, std::memory_order_relaxed);
        helpers().run(L);
        return L.status.load();
    } catch (...) {
        return 4;
    }
}
