//! The listener manager: the listeners in service (static and from LDS), the workers that
//! accept on them, and LDS's add / modify / remove. A modified listener on the same address
//! takes over the bound sockets (no connection is refused in between) and its predecessor stops
//! accepting while its connections carry on with their filter chains; a removed listener stops
//! accepting and drains its connections.

use super::{ActiveListener, ListenerManagerStats};
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What a worker is told to do.
pub enum WorkerCommand {
    /// Accept connections for this listener on this (duplicated) socket.
    Accept(Arc<ActiveListener>, std::net::TcpListener),
}

pub struct ListenerManager {
    active: ArcSwap<Vec<Arc<ActiveListener>>>,
    workers: Mutex<Vec<mpsc::UnboundedSender<WorkerCommand>>>,
    pub stats: ListenerManagerStats,
    /// `--drain-time-s`: how long connections on a removed filter chain may finish.
    drain_time: std::time::Duration,
}

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerManager")
            .field("listeners", &self.active.load().len())
            .finish()
    }
}

impl ListenerManager {
    pub fn new(stats: ListenerManagerStats, drain_time: std::time::Duration) -> Self {
        Self {
            active: ArcSwap::from_pointee(Vec::new()),
            workers: Mutex::new(Vec::new()),
            stats,
            drain_time,
        }
    }

    /// The listeners in service, in the order they were added.
    pub fn all(&self) -> Arc<Vec<Arc<ActiveListener>>> {
        self.active.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ActiveListener>> {
        self.active
            .load()
            .iter()
            .find(|l| l.config.name == name)
            .cloned()
    }

    fn accept_on(
        tx: &mpsc::UnboundedSender<WorkerCommand>,
        worker: usize,
        l: &Arc<ActiveListener>,
    ) {
        match l.socket_for(worker) {
            Ok(s) => {
                let _ = tx.send(WorkerCommand::Accept(l.clone(), s));
            }
            Err(e) => {
                tracing::error!(listener = %l.config.name, "cannot hand the socket to worker {worker}: {e}")
            }
        }
    }

    /// A worker is up: it accepts on every listener in service, and on those added later.
    pub fn add_worker(&self, tx: mpsc::UnboundedSender<WorkerCommand>) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let index = workers.len();
        for l in self.active.load().iter() {
            Self::accept_on(&tx, index, l);
        }
        workers.push(tx);
        self.stats.workers_started.set(1);
    }

    /// Put a listener in service (replacing the one of the same name, whose connections carry
    /// on but which accepts no more).
    pub fn activate(&self, l: Arc<ActiveListener>) {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut replaced = None;
        self.active.rcu(|list| {
            let mut list = Vec::clone(list);
            replaced = None;
            match list.iter().position(|x| x.config.name == l.config.name) {
                Some(i) => replaced = Some(std::mem::replace(&mut list[i], l.clone())),
                None => list.push(l.clone()),
            }
            list
        });
        for (i, tx) in workers.iter().enumerate() {
            Self::accept_on(tx, i, &l);
        }
        drop(workers);
        if let Some(old) = replaced {
            old.shut();
            // Connections on filter chains the new version dropped drain, and are closed at
            // the deadline; the others keep their chain until they end.
            let draining = old.retire_chains(&l) as i64;
            if draining > 0 {
                let gauge = self.stats.total_filter_chains_draining.clone();
                gauge.add(draining);
                let deadline = self.drain_time;
                tokio::spawn(async move {
                    tokio::time::sleep(deadline).await;
                    old.close_retired();
                    gauge.sub(draining);
                });
            }
        }
        self.stats
            .total_listeners_active
            .set(self.active.load().len() as i64);
    }

    /// Take a listener out of service: it stops accepting and its connections drain.
    pub fn remove(&self, name: &str) -> Option<Arc<ActiveListener>> {
        let mut removed = None;
        self.active.rcu(|list| {
            let mut list = Vec::clone(list);
            removed = list
                .iter()
                .position(|x| x.config.name == name)
                .map(|i| list.remove(i));
            list
        });
        if let Some(old) = &removed {
            old.shut();
            old.drain_all();
            self.stats.listener_removed.inc();
        }
        self.stats
            .total_listeners_active
            .set(self.active.load().len() as i64);
        removed
    }
}
