//! Per-link TCP proxies between node processes, which a test cuts to
//! partition the cluster.

use std::path::Path;

use crate::config::write_config;
use crate::procs::free_ports;

/// A one-way TCP link from a node to a peer (raft traffic, and snapshot
/// streams), which a test can cut: open connections are shut down and new
/// ones closed at once, like a network partition.
pub struct Link {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Link {
    pub fn to(target: u16) -> Link {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for a in l.incoming() {
                let Ok(a) = a else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = a.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(b) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = a.shutdown(std::net::Shutdown::Both);
                    continue;
                };
                let _ = (a.set_nodelay(true), b.set_nodelay(true));
                {
                    let mut v = cs.lock().unwrap();
                    v.push(a.try_clone().unwrap());
                    v.push(b.try_clone().unwrap());
                }
                for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Link { port, cut, conns }
    }

    pub fn set_cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Three node configs whose peers reach each other only through [`Link`]s,
/// so a test can partition them.
pub struct Linked {
    pub ports: Vec<u16>,
    /// `links[i][j]`: node i+1's way to node j+1.
    pub links: Vec<Vec<Option<Link>>>,
    pub cfgs: Vec<std::path::PathBuf>,
}

impl Linked {
    pub fn new(dir: &Path) -> Linked {
        let all_ports = free_ports(6);
        let (ports, metrics) = all_ports.split_at(3);
        let links: Vec<Vec<Option<Link>>> = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| (i != j).then(|| Link::to(ports[j])))
                    .collect()
            })
            .collect();
        let cfgs = (1..=3)
            .map(|id| {
                let via: Vec<u16> = (0..3)
                    .map(|j| links[id - 1][j].as_ref().map_or(ports[j], |l| l.port))
                    .collect();
                let cfg = write_config(dir, id, &via, metrics[id - 1]);
                // The node listens on its own port; peers are reached
                // through the links.
                let text = std::fs::read_to_string(&cfg).unwrap().replacen(
                    &format!("listen = \"127.0.0.1:{}\"", via[id - 1]),
                    &format!("listen = \"127.0.0.1:{}\"", ports[id - 1]),
                    1,
                );
                std::fs::write(&cfg, text).unwrap();
                cfg
            })
            .collect();
        Linked {
            ports: ports.to_vec(),
            links,
            cfgs,
        }
    }

    /// Cuts (or restores) every link to and from node index `i`.
    pub fn cut(&self, i: usize, on: bool) {
        for j in 0..3 {
            if let Some(x) = &self.links[i][j] {
                x.set_cut(on);
            }
            if let Some(x) = &self.links[j][i] {
                x.set_cut(on);
            }
        }
    }
}
