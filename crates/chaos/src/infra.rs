//! The run's own PostgreSQL and Redis: started from the installed binaries into the run's folder,
//! on ports of their own, so restarting PostgreSQL or stopping Redis never disturbs the machine's
//! shared servers or the tests running beside the chaos run.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A free loopback port, as the kernel hands one out; the listener is closed at once, so another
/// program could take it in between, which the services would report by failing to bind.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether something accepts TCP connections on a loopback port.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The newest installed PostgreSQL's programs (Debian's `/usr/lib/postgresql/<version>/bin`).
fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql)")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL with initdb under /usr/lib/postgresql")
}

fn is_root() -> bool {
    // The effective uid, without a libc dependency: /proc/self/status's `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user.
fn pg_command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
    pub password: String,
}

impl Postgres {
    /// A new cluster in `dir` (made readable by the `postgres` user when run as root), with the
    /// role `sonora` and a random password, listening on 127.0.0.1 only.
    pub fn start(dir: &Path, log: &Path) -> anyhow::Result<Self> {
        let bin = pg_bin()?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        let password = format!("chaos-pg-{}", uuid::Uuid::new_v4().simple());
        let pwfile = dir.join("pgpass");
        std::fs::write(&pwfile, &password)?;
        std::fs::write(log, "")?;
        if is_root() {
            for path in [dir, &data, &pwfile, log] {
                let status = Command::new("chown").arg("postgres").arg(path).status()?;
                if !status.success() {
                    bail!("cannot give {} to the postgres user", path.display());
                }
            }
        }
        let out = pg_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "sonora",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-sync"])
            .output()
            .context("initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::remove_file(&pwfile)?;
        let pg = Self {
            bin,
            data,
            log: log.to_owned(),
            port: free_port()?,
            password,
        };
        pg.ctl("start")?;
        Ok(pg)
    }

    fn ctl(&self, action: &str) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            self.port,
            self.data.display()
        );
        let out = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-m", "fast", "-w", "-t", "60", "-o", &options, action])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("pg_ctl {action}"))?;
        if !out.status.success() {
            bail!(
                "pg_ctl {action} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://sonora:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// Everything in the database, as SQL (`pg_dump` over the cluster's own socket).
    pub fn dump(&self) -> anyhow::Result<String> {
        let out = pg_command(&self.bin, "pg_dump")
            .arg("-h")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-U", "sonora", "postgres"])
            .stdin(Stdio::null())
            .output()
            .context("pg_dump")?;
        if !out.status.success() {
            bail!("pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (fast: sessions are cut, as in a real restart) and starts it again;
    /// returns how long it was away.
    pub fn restart(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.ctl("restart")?;
        Ok(started.elapsed())
    }

    pub fn stop(&self) {
        let _ = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis server of the run's own (no persistence: Redis holds only what may be lost).
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start(dir: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut redis = Self {
            port: free_port()?,
            dir: dir.to_owned(),
            log: log.to_owned(),
            child: None,
        };
        redis.up()?;
        Ok(redis)
    }

    /// Starts the server on its port and waits until it answers.
    pub fn up(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("redis-server (is it installed?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_open(self.port) {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server (SIGKILL: everything it held is gone, as after a crash).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}
