//! A fork-join pool for the matmul hot loop.
//!
//! Strategy: one decode step runs ~120 short parallel matmuls back to back.
//! A general-purpose pool puts idle workers to sleep between them, and the
//! wake-up (a futex round trip per call) costs as much as a small matmul.
//! Here workers spin for a short while (`SPIN`) after each job, waiting for
//! the next, and only then park. Jobs are split into tasks that threads take
//! from an atomic counter; each task's result never depends on which thread
//! ran it, so outputs are deterministic.
//!
//! Parameters: thread count from [`set_threads`] (default: all cores);
//! `SPIN` = 200 µs of spinning before a worker parks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

const SPIN: Duration = Duration::from_micros(200);

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the number of threads (the caller included). Takes effect only
/// before the pool's first use.
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), SeqCst);
}

/// Threads that run a job (the caller included).
pub fn threads() -> usize {
    pool().workers.len() + 1
}

struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Worker {
    thread: Thread,
    sleeping: AtomicBool,
}

struct Pool {
    workers: Vec<Worker>,
    generation: AtomicUsize,
    next_task: AtomicUsize,
    pending: AtomicUsize,
    job: Mutex<Option<JobPtr>>,
    submit: Mutex<()>,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the Job lives on the submitting thread's stack until every worker
// has finished with it (`pending` reaches zero before `run` returns).
unsafe impl Send for JobPtr {}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let n = match THREADS.load(SeqCst) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..n - 1 {
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("aerie-mm-{i}"))
                .spawn(move || {
                    tx.send(std::thread::current()).ok();
                    worker_loop(i)
                })
                .expect("spawn matmul worker");
        }
        let workers = (0..n - 1).map(|_| Worker { thread: rx.recv().expect("worker start"), sleeping: AtomicBool::new(false) }).collect();
        Pool {
            workers,
            generation: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            submit: Mutex::new(()),
        }
    })
}

fn worker_loop(index: usize) {
    // The pool is being built while workers start; wait until it exists.
    let p = loop {
        if let Some(p) = POOL.get() {
            break p;
        }
        std::thread::sleep(Duration::from_micros(50));
    };
    let me = &p.workers[index];
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let g = p.generation.load(SeqCst);
            if g != seen {
                break g;
            }
            spins += 1;
            if spins % 64 == 0 && start.elapsed() > SPIN {
                me.sleeping.store(true, SeqCst);
                if p.generation.load(SeqCst) == seen {
                    std::thread::park();
                }
                me.sleeping.store(false, SeqCst);
                continue;
            }
            std::hint::spin_loop();
        };
        seen = gen;
        let job = *p.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(j)) = job {
            // SAFETY: see JobPtr.
            run_tasks(p, unsafe { &*j });
        }
        p.pending.fetch_sub(1, SeqCst);
    }
}

fn run_tasks(p: &Pool, j: &Job) {
    // SAFETY: the closure outlives the job (see JobPtr).
    let f = unsafe { &*j.f };
    loop {
        let t = p.next_task.fetch_add(1, SeqCst);
        if t >= j.tasks {
            break;
        }
        f(t);
    }
}

/// Runs `f(0..tasks)` across the pool and returns when all have finished.
/// A call made while another is running (from another thread) runs inline.
pub fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    let guard = match p.submit.try_lock() {
        Ok(g) if tasks > 1 && !p.workers.is_empty() => g,
        _ => {
            (0..tasks).for_each(f);
            return;
        }
    };
    // SAFETY: erase the closure's lifetime; we wait for all workers below.
    let f_static: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f as *const (dyn Fn(usize) + Sync)) };
    let job = Job { f: f_static, tasks };
    p.next_task.store(0, SeqCst);
    p.pending.store(p.workers.len(), SeqCst);
    *p.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobPtr(&job));
    p.generation.fetch_add(1, SeqCst);
    for w in &p.workers {
        if w.sleeping.load(SeqCst) {
            w.thread.unpark();
        }
    }
    run_tasks(p, &job);
    while p.pending.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    *p.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    drop(guard);
}

struct SlicePtr<T>(*mut T);
// SAFETY: tasks touch disjoint chunks of the slice.
unsafe impl<T: Send> Send for SlicePtr<T> {}
unsafe impl<T: Send> Sync for SlicePtr<T> {}
impl<T> SlicePtr<T> {
    fn at(&self, i: usize) -> *mut T {
        // SAFETY: callers stay inside the slice.
        unsafe { self.0.add(i) }
    }
}

/// Runs `f(index, chunk)` over `data` split into chunks of `chunk` elements.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let n = data.len().div_ceil(chunk.max(1));
    let len = data.len();
    let ptr = SlicePtr(data.as_mut_ptr());
    run(n, &|i| {
        let lo = i * chunk;
        let hi = (lo + chunk).min(len);
        // SAFETY: chunk i covers lo..hi only, and each i runs once.
        let c = unsafe { std::slice::from_raw_parts_mut(ptr.at(lo), hi - lo) };
        f(i, c);
    });
}
