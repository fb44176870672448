use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
pub struct TaskPool {
    sharing: Arc<Sharing>,
    // orders-svc patch: the stack of each thread, None for the default (for the test of
    // a failed spawn).
    stack_size: Option<usize>,
}

struct Sharing {
    // list of the tasks to be done by worker threads
    todo: Mutex<VecDeque<Box<dyn FnMut() + Send>>>,

    // condvar that will be notified whenever a task is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

impl TaskPool {
    pub fn new() -> TaskPool {
        TaskPool::with_stack_size(None)
    }

    fn with_stack_size(stack_size: Option<usize>) -> TaskPool {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
            }),
            stack_size,
        };

        for _ in 0..MIN_THREADS {
            // orders-svc patch: a pool that could not start its first threads starts
            // one per task instead.
            if let Err(e) = pool.add_thread(None) {
                log::error!("event=http_thread_spawn_failed error=\"{e}\"");
            }
        }

        pool
    }

    /// Executes a function in a thread.
    /// If no thread is available, spawns a new one.
    ///
    /// orders-svc patch: if that thread cannot be started, the error is returned and the
    /// task is dropped without running, where upstream panicked.
    pub fn spawn(&self, code: Box<dyn FnMut() + Send>) -> std::io::Result<()> {
        let mut queue = self.sharing.todo.lock().unwrap();

        // orders-svc patch: a thread that was notified still counts as waiting until it
        // takes the lock again, so `waiting_tasks > 0` let two tasks queue for one idle
        // thread; the second (a connection) then waited until some other connection
        // ended. Queue only while more threads wait than tasks are queued.
        if self.sharing.waiting_tasks.load(Ordering::Acquire) <= queue.len() {
            drop(queue);
            self.add_thread(Some(code))
        } else {
            queue.push_back(code);
            self.sharing.condvar.notify_one();
            Ok(())
        }
    }

    fn add_thread(&self, initial_fn: Option<Box<dyn FnMut() + Send>>) -> std::io::Result<()> {
        let sharing = self.sharing.clone();

        let mut builder = thread::Builder::new();
        if let Some(size) = self.stack_size {
            builder = builder.stack_size(size);
        }
        builder.spawn(move || {
            let sharing = sharing;
            let _active_guard = Registration::new(&sharing.active_tasks);

            if let Some(mut f) = initial_fn {
                f();
            }

            loop {
                let mut task: Box<dyn FnMut() + Send> = {
                    let mut todo = sharing.todo.lock().unwrap();

                    let task;
                    loop {
                        if let Some(poped_task) = todo.pop_front() {
                            task = poped_task;
                            break;
                        }
                        let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                        let received =
                            if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                todo = sharing.condvar.wait(todo).unwrap();
                                true
                            } else {
                                let (new_lock, waitres) = sharing
                                    .condvar
                                    .wait_timeout(todo, Duration::from_millis(5000))
                                    .unwrap();
                                todo = new_lock;
                                !waitres.timed_out()
                            };

                        if !received && todo.is_empty() {
                            return;
                        }
                    }

                    task
                };

                task();
            }
        })?;
        Ok(())
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_thread_that_cannot_start_is_an_error_and_its_task_is_dropped() {
        // No machine has room for stacks this large.
        let pool = TaskPool::with_stack_size(Some(1 << 50));
        let (sender, receiver) = mpsc::channel::<()>();
        let mut task = Some(sender);
        let error = pool.spawn(Box::new(move || drop(task.take()))).unwrap_err();
        assert!(!error.to_string().is_empty());
        // The task (and the sender it holds) is gone, and it never ran.
        assert_eq!(receiver.recv_timeout(Duration::from_secs(1)), Err(mpsc::RecvTimeoutError::Disconnected));
    }

    #[test]
    fn tasks_run_on_the_pool() {
        let pool = TaskPool::new();
        let (sender, receiver) = mpsc::channel();
        for i in 0..10 {
            let sender = sender.clone();
            pool.spawn(Box::new(move || sender.send(i).unwrap())).unwrap();
        }
        let mut got: Vec<i32> = (0..10).map(|_| receiver.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
