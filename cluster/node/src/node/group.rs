//! Group commit: requests that arrive while a write is in flight queue
//! their items, and the next write carries all of them as one command.
//!
//! Whichever request finds no write running takes everything queued (in
//! arrival order, at least one request's items, at most `max` items in
//! all) and commits it; every request returns once the command holding
//! its items is committed, with that command's outcome. Ingest batches
//! (one `Ingest` per group) and audit records (one `Audit` per group, so
//! one synced write or raft round for many person-level answers) both go
//! through it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};

use crate::error::NodeError;

pub(super) struct GroupCommit<T> {
    state: Mutex<GroupState<T>>,
    applied: Condvar,
}

impl<T> Default for GroupCommit<T> {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::new(GroupState {
                next_ticket: 0,
                queue: VecDeque::new(),
                applying: false,
                done: HashMap::new(),
            }),
            applied: Condvar::new(),
        }
    }
}

struct GroupState<T> {
    next_ticket: u64,
    queue: VecDeque<(u64, Vec<T>)>,
    applying: bool,
    /// Outcome per ticket whose items were committed, until its request
    /// collects it: `Ok` or the error, as a copy for the requests that did
    /// not commit.
    done: HashMap<u64, Result<(), NodeError>>,
}

/// Ends a group whose commit panicked: every request in it gets an error,
/// and the next waiting request commits.
struct GroupGuard<'a, T> {
    group: &'a GroupCommit<T>,
    tickets: Option<Vec<u64>>,
}

impl<T> Drop for GroupGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(tickets) = self.tickets.take() {
            let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.applying = false;
            for t in tickets {
                st.done.insert(
                    t,
                    Err(NodeError::Unavailable(
                        "the write failed on this node; retry it".into(),
                    )),
                );
            }
            self.group.applied.notify_all();
        }
    }
}

/// A copy of an error for the other requests of a failed group: the same
/// kind where it is only a message, otherwise unavailable with its text.
fn shared_error(e: &NodeError) -> NodeError {
    match e {
        NodeError::Invalid(m) => NodeError::Invalid(m.clone()),
        NodeError::Refused(m) => NodeError::Refused(m.clone()),
        other => NodeError::Unavailable(other.to_string()),
    }
}

impl<T> GroupCommit<T> {
    /// Queues `items` and returns once a command holding them is
    /// committed: by `commit` on this thread (with other requests' items
    /// too), or by another request's. `commit` gets the items of one group
    /// in arrival order; it may run more than once if the queue ahead of
    /// this request is longer than `max`.
    pub(super) fn submit(
        &self,
        items: Vec<T>,
        max: usize,
        commit: &mut dyn FnMut(Vec<T>) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back((ticket, items));
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                return r;
            }
            if st.applying {
                st = self.applied.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.applying = true;
            let mut tickets = Vec::new();
            let mut all: Vec<T> = Vec::new();
            while let Some((_, items)) = st.queue.front() {
                if !all.is_empty() && all.len() + items.len() > max {
                    break;
                }
                let (t, items) = st.queue.pop_front().expect("front exists");
                tickets.push(t);
                if all.is_empty() {
                    all = items;
                } else {
                    all.extend(items);
                }
            }
            drop(st);
            let mut guard = GroupGuard {
                group: self,
                tickets: Some(tickets.clone()),
            };
            let r = commit(all);
            guard.tickets = None;
            st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.applying = false;
            for t in tickets {
                let copy = match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(shared_error(e)),
                };
                st.done.insert(t, copy);
            }
            if let Err(e) = r {
                // If our own items were in this group, hand back the
                // original error rather than the copy.
                if st.done.remove(&ticket).is_some() {
                    self.applied.notify_all();
                    return Err(e);
                }
            }
            self.applied.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_requests_share_commits_in_order_and_each_waits_for_its_own() {
        let g = Arc::new(GroupCommit::<u32>::default());
        let committed = Arc::new(Mutex::new(Vec::<u32>::new()));
        let commits = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..32u32)
            .map(|i| {
                let (g, committed, commits) = (g.clone(), committed.clone(), commits.clone());
                std::thread::spawn(move || {
                    g.submit(vec![i], 1_000, &mut |items| {
                        commits.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        committed.lock().unwrap().extend(items);
                        Ok(())
                    })
                    .unwrap();
                    assert!(committed.lock().unwrap().contains(&i), "{i} not committed");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = committed.lock().unwrap().clone();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..32).collect::<Vec<_>>());
        assert!(commits.load(Ordering::SeqCst) < 32);
    }

    #[test]
    fn a_failed_group_fails_each_of_its_requests() {
        let g = GroupCommit::<u32>::default();
        let r = g.submit(vec![1], 10, &mut |_| Err(NodeError::Invalid("bad".into())));
        assert!(matches!(r, Err(NodeError::Invalid(m)) if m == "bad"));
        // The group is free again.
        assert!(g.submit(vec![2], 10, &mut |_| Ok(())).is_ok());
    }
}
