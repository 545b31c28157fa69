//! The figures of one runtime's run, and the side-by-side table with the
//! ratios of the first runtime's figures over the second's.

use std::collections::BTreeMap;
use std::time::Duration;

use carrack_bench::quantiles::{ms, percentile};

use crate::leftovers::Held;

/// Everything one runtime's run measured.
#[derive(Debug, Default)]
pub struct Figures {
    /// Until every StartContainer answered.
    pub all_running: Option<Duration>,
    /// Latencies of the start calls.
    pub start_calls: BTreeMap<&'static str, Vec<Duration>>,
    /// Until every container had written its data (after all Running).
    pub written: Option<Duration>,
    /// CPU of the daemon under polling.
    pub daemon_cpu: Option<Duration>,
    /// CPU of the shims under polling.
    pub shim_cpu: Option<Duration>,
    /// Latencies of the polled calls.
    pub polled_calls: BTreeMap<&'static str, Vec<Duration>>,
    /// Containers whose writable layer showed the data, of those reporting one.
    pub layers_right: Option<(usize, usize)>,
    /// Daemon RSS after polling, KiB.
    pub daemon_rss_kib: Option<u64>,
    /// Shims' PSS summed after polling, KiB, and how many shims.
    pub shims_pss_kib: Option<(u64, usize)>,
    /// Until every pod was stopped and removed.
    pub removal: Option<Duration>,
    /// What the pods held while running.
    pub held: Option<Held>,
    /// What was left after removal (pod cgroups counted before the bench
    /// removed them).
    pub left: Option<Held>,
}

type Line = (String, Vec<Option<f64>>, bool);

/// Prints the table: one column per runtime, then the first over the
/// second.
pub fn print(names: &[String], figures: &[Figures]) {
    let mut lines: Vec<Line> = Vec::new();
    let mut add = |label: String, get: &dyn Fn(&Figures) -> Option<f64>, ratio: bool| {
        lines.push((label, figures.iter().map(get).collect(), ratio));
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    add("all Running (s)".into(), &|f| secs(f.all_running), true);
    for call in ["RunPodSandbox", "CreateContainer", "StartContainer"] {
        for (q, p) in [("p50", 0.5), ("p99", 0.99)] {
            add(
                format!("  {call} {q} (ms)"),
                &|f| quantile(&f.start_calls, call, p),
                true,
            );
        }
    }
    add(
        "data written, after (s)".into(),
        &|f| secs(f.written),
        false,
    );
    add(
        "CPU under polling, daemon (s)".into(),
        &|f| secs(f.daemon_cpu),
        true,
    );
    add(
        "CPU under polling, shims (s)".into(),
        &|f| secs(f.shim_cpu),
        true,
    );
    add(
        "CPU under polling, total (s)".into(),
        &|f| Some(secs(f.daemon_cpu)? + secs(f.shim_cpu)?),
        true,
    );
    add(
        "daemon RSS (MiB)".into(),
        &|f| f.daemon_rss_kib.map(|k| k as f64 / 1024.0),
        true,
    );
    add(
        "shims PSS, all (MiB)".into(),
        &|f| f.shims_pss_kib.map(|(k, _)| k as f64 / 1024.0),
        true,
    );
    add(
        "shims".into(),
        &|f| f.shims_pss_kib.map(|(_, n)| n as f64),
        false,
    );
    let polled: Vec<&'static str> = figures
        .iter()
        .flat_map(|f| f.polled_calls.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for call in polled {
        for (q, p) in [("p50", 0.5), ("p99", 0.99)] {
            add(
                format!("{call} {q} (ms)"),
                &|f| quantile(&f.polled_calls, call, p),
                true,
            );
        }
    }
    add(
        "writable layers showing the data".into(),
        &|f| f.layers_right.map(|(ok, _)| ok as f64),
        false,
    );
    add("stop + remove all (s)".into(), &|f| secs(f.removal), true);
    for (i, (what, _)) in Held::default().lines().iter().enumerate() {
        add(
            format!("held while running: {what}"),
            &|f| f.held.as_ref().map(|h| h.lines()[i].1 as f64),
            false,
        );
    }
    for (i, (what, _)) in Held::default().lines().iter().enumerate() {
        add(
            format!("left after removal: {what}"),
            &|f| f.left.as_ref().map(|h| h.lines()[i].1 as f64),
            false,
        );
    }

    let ratio_head = match names {
        [a, b, ..] => format!("{a}/{b}"),
        _ => String::new(),
    };
    print!("{:<44}", "");
    for n in names {
        print!("{n:>14}");
    }
    println!("{ratio_head:>22}");
    for (label, values, ratio) in lines {
        print!("{label:<44}");
        for v in &values {
            match v {
                Some(v) => print!("{v:>14.2}"),
                None => print!("{:>14}", "-"),
            }
        }
        match (ratio, values.first(), values.get(1)) {
            (true, Some(Some(a)), Some(Some(b))) if *b > 0.0 => println!("{:>22.2}", a / b),
            _ => println!(),
        }
    }
}

fn quantile(calls: &BTreeMap<&'static str, Vec<Duration>>, call: &str, p: f64) -> Option<f64> {
    let mut v = calls.get(call)?.clone();
    v.sort();
    Some(ms(percentile(&v, p)))
}
