// The interpreter's launch: blocks in order, each block's threads as fibers.
//
// A fiber runs until it reaches a barrier (__syncthreads, or a warp
// collective) or returns. The scheduler then resumes the next fiber that may
// run; a barrier opens once every live thread of its scope has arrived.
// Threads that returned no longer count, as on the GPU. A block whose live
// fibers all wait on barriers that cannot open is a deadlock (for example a
// __syncthreads inside a branch only some threads take): the launch fails
// with an error instead of hanging.
#include "cuda_interp.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

// Fiber switches. glibc's swapcontext makes a system call each time (it
// saves the signal mask), and a warp shuffle costs one switch per lane, so on
// x86-64 a switch is a few instructions instead: save the callee-saved
// registers and the FP control words on the old stack, swap stack pointers,
// restore. Under AddressSanitizer the fibers keep ucontext, which ASan knows.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define AERIE_FAST_FIBERS 1
extern "C" void aerie_fiber_switch(void** save_sp, void* load_sp);
asm(R"(
    .pushsection .text
    .globl aerie_fiber_switch
    .type aerie_fiber_switch, @function
aerie_fiber_switch:
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
    .size aerie_fiber_switch, .-aerie_fiber_switch
    .popsection
)");
#endif

namespace aerie_interp {

namespace {

struct Context {
#ifdef AERIE_FAST_FIBERS
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

// Prepares `c` to start `entry` on `stack` at its first switch.
void context_init(Context* c, char* stack, size_t bytes, void (*entry)()) {
#ifdef AERIE_FAST_FIBERS
    uintptr_t top = ((uintptr_t)(stack + bytes)) & ~(uintptr_t)15;
    // From the lowest address: FP control words, six callee-saved registers,
    // then `entry` as the return address, placed so that after `ret` the
    // stack is aligned as right after a call.
    uint64_t* sp = (uint64_t*)(top - 16 - 56);
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    sp[0] = (uint64_t)mxcsr | ((uint64_t)fpcw << 32);
    for (int i = 1; i <= 6; ++i) sp[i] = 0;
    sp[7] = (uint64_t)(uintptr_t)entry;
    c->sp = sp;
#else
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = bytes;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, entry, 0);
#endif
}

void context_switch(Context* from, Context* to) {
#ifdef AERIE_FAST_FIBERS
    aerie_fiber_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

}  // namespace

thread_local ThreadIndex* current = nullptr;

namespace {

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
    ThreadIndex index;
    Context ctx;
    State state = State::Ready;
    int warp = 0;
    unsigned long long waits_for = 0;  // barrier generation it waits to pass
    uint64_t word = 0;                 // its value in the warp exchange
};

struct Warp {
    int live = 0, arrived = 0;
    unsigned long long generation = 0;
    uint64_t slots[32];
    unsigned int arrived_mask = 0;
    uint64_t published[32];          // the slots as they stood when the barrier opened
    unsigned int published_mask = 0;  // the lanes that took part in that exchange
};

struct Launch {
    void (*body)(void**);
    void** params;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<char*> stacks;
    Context scheduler;
    Fiber* running = nullptr;
    int live = 0, block_arrived = 0;
    unsigned long long block_generation = 0;
    std::vector<unsigned char> dynamic_shared;
};

thread_local Launch* launch_now = nullptr;
std::mutex launch_lock;  // one launch at a time: `__shared__` statics are process-wide
constexpr size_t kStackBytes = 256 * 1024;

void fiber_entry() {
    Launch* l = launch_now;
    l->body(l->params);
    Fiber* f = l->running;
    f->state = State::Done;
    context_switch(&f->ctx, &l->scheduler);
    std::abort();  // a finished fiber is never resumed
}

// Back to the scheduler; returns when this fiber may run again.
void yield_to_scheduler() {
    Launch* l = launch_now;
    context_switch(&l->running->ctx, &l->scheduler);
    current = &l->running->index;
}

void open_block_barrier(Launch* l) {
    l->block_arrived = 0;
    ++l->block_generation;
}

void open_warp_barrier(Warp& w) {
    std::memcpy(w.published, w.slots, sizeof w.slots);
    w.published_mask = w.arrived_mask;
    w.arrived_mask = 0;
    w.arrived = 0;
    ++w.generation;
}

bool may_run(const Launch* l, const Fiber& f) {
    switch (f.state) {
        case State::Ready: return true;
        case State::AtBlockBarrier: return l->block_generation > f.waits_for;
        case State::AtWarpBarrier: return l->warps[f.warp].generation > f.waits_for;
        case State::Done: return false;
    }
    return false;
}

// Runs one block to completion; false on a barrier deadlock.
bool run_block(Launch* l, uint3 block, dim3 grid, dim3 bdim) {
    size_t n = l->fibers.size();
    l->live = (int)n;
    l->block_arrived = 0;
    for (auto& w : l->warps) w = Warp{};
    for (size_t i = 0; i < n; ++i) {
        Fiber& f = l->fibers[i];
        f.index.thread = {(unsigned)(i % bdim.x), (unsigned)(i / bdim.x % bdim.y), (unsigned)(i / (bdim.x * bdim.y))};
        f.index.block = block;
        f.index.block_dim = bdim;
        f.index.grid_dim = grid;
        f.state = State::Ready;
        f.warp = (int)(i / 32);
        l->warps[f.warp].live++;
        context_init(&f.ctx, l->stacks[i], kStackBytes, fiber_entry);
    }
    size_t done = 0;
    while (done < n) {
        bool progressed = false;
        for (size_t i = 0; i < n; ++i) {
            Fiber& f = l->fibers[i];
            if (!may_run(l, f)) continue;
            f.state = State::Ready;
            l->running = &f;
            current = &f.index;
            context_switch(&l->scheduler, &f.ctx);
            progressed = true;
            if (f.state == State::Done) {
                ++done;
                --l->live;
                Warp& w = l->warps[f.warp];
                --w.live;
                // A returned thread no longer holds back its block or warp.
                if (w.live > 0 && w.arrived == w.live) open_warp_barrier(w);
                if (l->live > 0 && l->block_arrived == l->live) open_block_barrier(l);
            }
        }
        if (!progressed) return false;
    }
    return true;
}

}  // namespace

void syncthreads() {
    Launch* l = launch_now;
    Fiber* f = l->running;
    f->state = State::AtBlockBarrier;
    f->waits_for = l->block_generation;
    if (++l->block_arrived == l->live) open_block_barrier(l);
    yield_to_scheduler();
}

uint64_t warp_exchange(uint64_t mine, int src) {
    Launch* l = launch_now;
    Fiber* f = l->running;
    Warp& w = l->warps[f->warp];
    int lane = lane_id();
    w.slots[lane] = mine;
    w.arrived_mask |= 1u << lane;
    f->state = State::AtWarpBarrier;
    f->waits_for = w.generation;
    if (++w.arrived == w.live) open_warp_barrier(w);
    yield_to_scheduler();
    if (src < 0 || src > 31) return mine;
    return l->warps[f->warp].published[src];
}

unsigned int warp_ballot(bool pred) {
    Launch* l = launch_now;
    Fiber* f = l->running;
    warp_exchange(pred ? 1 : 0, 0);
    const Warp& w = l->warps[f->warp];
    unsigned int bits = 0;
    for (int i = 0; i < 32; ++i)
        if ((w.published_mask >> i & 1u) && w.published[i] == 1) bits |= 1u << i;
    return bits;
}

void* dynamic_shared() { return launch_now->dynamic_shared.data(); }

}  // namespace aerie_interp

// Error codes of aerie_interp_launch (mirrored in kernels/src/cuda/interp.rs).
enum : int { kOk = 0, kBadDims = 1, kDeadlock = 2, kTooMuchShared = 3 };

extern "C" int aerie_interp_launch(void (*body)(void**), void** params, const unsigned int grid[3],
                                   const unsigned int block[3], unsigned int shared_bytes) {
    using namespace aerie_interp;
    size_t threads = (size_t)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0 ||
        grid[1] > 65535 || grid[2] > 65535)
        return kBadDims;
    if (shared_bytes > 227 * 1024) return kTooMuchShared;
    std::lock_guard<std::mutex> guard(launch_lock);
    Launch l;
    l.body = body;
    l.params = params;
    l.fibers.resize(threads);
    l.warps.resize((threads + 31) / 32);
    // Fiber stacks are kept across launches (launches are serialized by
    // launch_lock): allocating and freeing 256 KiB per thread per launch made
    // glibc map and unmap them each time, and the page faults of fresh
    // stacks were most of a small launch's cost.
    // Never destroyed, so the stacks stay reachable (LeakSanitizer).
    static std::vector<char*>* stack_pool = new std::vector<char*>();
    while (stack_pool->size() < threads) stack_pool->push_back(static_cast<char*>(std::malloc(kStackBytes)));
    l.stacks.assign(stack_pool->begin(), stack_pool->begin() + threads);
    // Poisoned, not zeroed: a kernel that reads dynamic shared memory before
    // writing it gets NaNs and large integers, as uninitialised memory would.
    l.dynamic_shared.assign(shared_bytes, 0xff);
    Launch* saved = launch_now;
    launch_now = &l;
    int rc = kOk;
    dim3 g(grid[0], grid[1], grid[2]), b(block[0], block[1], block[2]);
    for (unsigned z = 0; z < g.z && rc == kOk; ++z)
        for (unsigned y = 0; y < g.y && rc == kOk; ++y)
            for (unsigned x = 0; x < g.x && rc == kOk; ++x)
                if (!run_block(&l, uint3{x, y, z}, g, b)) rc = kDeadlock;
    launch_now = saved;
    current = nullptr;
    return rc;
}
