//! Running child processes and measuring them: wall time, peak RSS, paired ratios.

use crate::*;

/// Wall time of a batch of processes and the largest peak RSS among them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) wall: Duration,
    pub(crate) max_rss_kb: u64,
    /// User + system CPU time of all the processes.
    pub(crate) cpu: Duration,
}

/// A process to run: the command and a label for error messages.
pub(crate) struct Job {
    pub(crate) label: String,
    pub(crate) cmd: Command,
}

pub(crate) fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Waits for one child by pid with `wait4`, which reports that child's own rusage
/// (`RUSAGE_CHILDREN` would mix in every psql and pg_ctl this process ever ran).
pub(crate) fn wait_child(pid: u32) -> io::Result<(i32, libc::rusage)> {
    let pid = pid as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own unwaited child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs one job to completion; panics with its stderr if it fails.
// The child is reaped by `wait_child` (wait4, for its own rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
pub(crate) fn run_job(job: Job, logs: &Path, seq: usize) -> (u64, Duration) {
    let Job { label, mut cmd } = job;
    let err_path = logs.join(format!("{seq:05}.stderr"));
    let err = File::create(&err_path).expect("create a stderr file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("bench: cannot start {label}: {e}"));
    let (status, ru) = wait_child(child.id()).expect("wait4");
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: String = text
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!("bench: {label} failed (wait status {status}):\n{tail}");
    }
    (
        u64::try_from(ru.ru_maxrss).unwrap_or(0),
        timeval(ru.ru_utime) + timeval(ru.ru_stime),
    )
}

/// The median of the per-repetition ratios `ours[i] / base[i]`: every repetition runs
/// both back to back, so a ratio compares timings taken under the same load, and the
/// median drops repetitions that other work on the machine disturbed.
pub(crate) fn paired_ratio(ours: &[f64], base: &[f64]) -> f64 {
    assert_eq!(ours.len(), base.len(), "unpaired samples");
    median(ours.iter().zip(base).map(|(a, b)| a / b).collect())
}

/// Prints every repetition's time, for whoever wants more than the medians.
pub(crate) fn log_samples(figure: &str, name: &str, v: &[f64]) {
    let list: Vec<String> = v.iter().map(|x| format!("{:.1}", x * 1000.0)).collect();
    eprintln!(
        "bench: [{figure}] {name}, ms per repetition: {}",
        list.join(" ")
    );
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
