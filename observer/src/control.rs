//! The agent's control socket: `observer snapshot` asks a running `observer run` for its
//! table of sockets over a unix socket (root only: mode 0600 in a 0700 directory).
//!
//! The protocol is one request line (`snapshot`), answered by NDJSON lines and end of file.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, oneshot},
};

/// Where the agent listens unless told otherwise (`--control-socket`).
pub const DEFAULT_SOCKET: &str = "/run/observer/observer.sock";
/// How long either side waits for the other.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ControlError {
    #[error(
        "cannot listen on {path}: {err} (another observer running? pass --control-socket PATH, or \"none\")"
    )]
    Listen { path: String, err: io::Error },
    #[error("the agent at {path} did not answer: {err}")]
    Request { path: String, err: io::Error },
}

/// The agent's bound control socket. Dropping it removes the socket file, so an agent that
/// stopped leaves nothing behind (one killed outright leaves a file the next agent replaces).
pub struct Listener {
    pub socket: tokio::net::UnixListener,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds the control socket; a stale socket file (no one listening) is replaced.
///
/// # Errors
/// The directory cannot be made, or another agent listens there.
pub fn listen(path: &Path) -> Result<Listener, ControlError> {
    let fail = |err| ControlError::Listen {
        path: path.display().to_string(),
        err,
    };
    // A directory made here is root's alone; one that exists (/tmp, /run) is left as it is.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        fs::create_dir_all(dir).map_err(fail)?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(fail(io::Error::new(
                io::ErrorKind::AddrInUse,
                "an agent already answers there",
            )));
        }
        fs::remove_file(path).map_err(fail)?;
    }
    let socket = tokio::net::UnixListener::bind(path).map_err(fail)?;
    let listener = Listener {
        socket,
        path: path.to_owned(),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

/// Asks the agent at `path` for a snapshot; `None` when no agent listens there.
///
/// # Errors
/// An agent listens but did not answer in time.
pub fn request(path: &Path) -> Result<Option<String>, ControlError> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(err) => {
            return Err(ControlError::Request {
                path: path.display().to_string(),
                err,
            });
        }
    };
    let fail = |err| ControlError::Request {
        path: path.display().to_string(),
        err,
    };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    stream.write_all(b"snapshot\n").map_err(fail)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(fail)?;
    Ok(Some(answer))
}

/// A client's request line, read off the capture loop; the loop sends its answer to `reply`.
pub struct Request {
    pub line: String,
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// Serves one client on a task of its own: reads its request line, hands it to the capture
/// loop through `requests`, and writes the answer, each bounded by [`TIMEOUT`]. A client that
/// sends nothing or reads slowly holds only its task, never the loop.
pub fn serve(stream: tokio::net::UnixStream, requests: mpsc::Sender<Request>) {
    tokio::spawn(async move {
        if let Err(err) = answer(stream, requests).await {
            eprintln!("observer: warning: a snapshot request failed: {err}");
        }
    });
}

async fn answer(stream: tokio::net::UnixStream, requests: mpsc::Sender<Request>) -> io::Result<()> {
    let timed_out = |what| io::Error::new(io::ErrorKind::TimedOut, what);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        TIMEOUT,
        tokio::io::BufReader::new(read)
            .take(256)
            .read_line(&mut line),
    )
    .await
    .map_err(|_| timed_out("the client sent no request within 10 s"))??;
    let (reply, answer) = oneshot::channel();
    let stopped = || io::Error::other("the agent is stopping");
    requests
        .send(Request {
            line: line.trim().to_owned(),
            reply,
        })
        .await
        .map_err(|_| stopped())?;
    let body = answer.await.map_err(|_| stopped())?;
    tokio::time::timeout(TIMEOUT, write.write_all(&body))
        .await
        .map_err(|_| timed_out("the client did not read the answer within 10 s"))?
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_shared_directory_keeps_its_mode_and_a_new_one_is_private() {
        // A /tmp of our own: sticky and world-writable.
        let shared = std::env::temp_dir().join(format!("observer-control-{}", std::process::id()));
        fs::create_dir_all(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let in_shared = listen(&shared.join("agent.sock")).expect("listen");
        assert_eq!(
            mode(&shared),
            0o1777,
            "the existing directory is left as it was"
        );
        assert_eq!(mode(&shared.join("agent.sock")), 0o600);
        let made = shared.join("made").join("here");
        let in_made = listen(&made.join("agent.sock")).expect("listen");
        assert_eq!(
            mode(&made),
            0o700,
            "a directory made for the socket is private"
        );
        drop((in_shared, in_made));
        fs::remove_dir_all(&shared).expect("cleanup");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stale_socket_is_replaced_a_live_one_refused_and_a_stopped_agent_leaves_none() {
        let dir =
            std::env::temp_dir().join(format!("observer-control-life-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("agent.sock");
        // A socket file nobody listens on, as an agent killed outright leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let agent = listen(&path).expect("a stale file is replaced");
        assert!(
            matches!(listen(&path), Err(ControlError::Listen { err, .. }) if err.kind() == io::ErrorKind::AddrInUse),
            "a second agent on the same path is refused"
        );
        assert!(path.exists(), "the refusal left the first agent's socket");
        drop(agent);
        assert!(!path.exists(), "a stopped agent removes its socket");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
