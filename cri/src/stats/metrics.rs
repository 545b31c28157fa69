//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-named
//! metrics kubelet's CRI stats provider turns into its `/metrics/cadvisor`
//! series, built from the same samples as PodSandboxStats.
//!
//! Every descriptor's `label_keys` match, in order, the `label_values` of
//! its metrics: `id` and `name` (the container id and name, or the sandbox
//! id and `POD` for pod-level series), then `interface` for network series.
//! kubelet adds the pod, namespace and container labels itself.
//!
//! A CRI metric value is an unsigned integer: `*_seconds_total` series are
//! whole seconds (the nanosecond counter is in ContainerStats).

use carrack_proto::cri;

const BASE_LABELS: &[&str] = &["id", "name"];
const NETWORK_LABELS: &[&str] = &["id", "name", "interface"];

/// What a series is about, for its descriptor.
struct Series {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const CONTAINER_SERIES: &[Series] = &[
    Series {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative cpu time consumed in seconds.",
        labels: BASE_LABELS,
    },
    Series {
        name: "container_memory_working_set_bytes",
        help: "Current working set in bytes.",
        labels: BASE_LABELS,
    },
    Series {
        name: "container_memory_usage_bytes",
        help: "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        labels: BASE_LABELS,
    },
    Series {
        name: "container_memory_rss",
        help: "Size of RSS in bytes.",
        labels: BASE_LABELS,
    },
    Series {
        name: "container_memory_failures_total",
        help: "Cumulative count of memory page faults.",
        labels: BASE_LABELS,
    },
    Series {
        name: "container_memory_major_page_faults_total",
        help: "Cumulative count of major memory page faults.",
        labels: BASE_LABELS,
    },
    Series {
        name: "container_fs_usage_bytes",
        help: "Number of bytes that are consumed by the container on this filesystem.",
        labels: BASE_LABELS,
    },
    Series {
        name: "container_fs_inodes_total",
        help: "Number of inodes used by the container on this filesystem.",
        labels: BASE_LABELS,
    },
];

const POD_SERIES: &[Series] = &[
    Series {
        name: "container_network_receive_bytes_total",
        help: "Cumulative count of bytes received.",
        labels: NETWORK_LABELS,
    },
    Series {
        name: "container_network_receive_errors_total",
        help: "Cumulative count of errors encountered while receiving.",
        labels: NETWORK_LABELS,
    },
    Series {
        name: "container_network_transmit_bytes_total",
        help: "Cumulative count of bytes transmitted.",
        labels: NETWORK_LABELS,
    },
    Series {
        name: "container_network_transmit_errors_total",
        help: "Cumulative count of errors encountered while transmitting.",
        labels: NETWORK_LABELS,
    },
    Series {
        name: "container_processes",
        help: "Number of processes running inside the container.",
        labels: BASE_LABELS,
    },
];

/// Every metric ListPodSandboxMetrics can return.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    CONTAINER_SERIES
        .iter()
        .chain(POD_SERIES)
        .map(|s| cri::MetricDescriptor {
            name: s.name.to_owned(),
            help: s.help.to_owned(),
            label_keys: s.labels.iter().map(|l| l.to_string()).collect(),
        })
        .collect()
}

fn metric(
    name: &str,
    ts: i64,
    kind: cri::MetricType,
    labels: &[&str],
    v: Option<&cri::UInt64Value>,
) -> Option<cri::Metric> {
    v.map(|v| cri::Metric {
        name: name.to_owned(),
        timestamp: ts,
        metric_type: kind as i32,
        label_values: labels.iter().map(|l| l.to_string()).collect(),
        value: Some(*v),
    })
}

fn container_metrics(c: &cri::ContainerStats) -> cri::ContainerMetrics {
    use cri::MetricType::{Counter, Gauge};
    let attrs = c.attributes.clone().unwrap_or_default();
    let name = attrs.metadata.map(|m| m.name).unwrap_or_default();
    let labels = [attrs.id.as_str(), name.as_str()];
    let mut out = Vec::new();
    if let Some(cpu) = &c.cpu {
        let secs = cpu
            .usage_core_nano_seconds
            .as_ref()
            .map(|v| cri::UInt64Value {
                value: v.value / 1_000_000_000,
            });
        out.extend(metric(
            "container_cpu_usage_seconds_total",
            cpu.timestamp,
            Counter,
            &labels,
            secs.as_ref(),
        ));
    }
    if let Some(m) = &c.memory {
        for (n, kind, v) in [
            (
                "container_memory_working_set_bytes",
                Gauge,
                &m.working_set_bytes,
            ),
            ("container_memory_usage_bytes", Gauge, &m.usage_bytes),
            ("container_memory_rss", Gauge, &m.rss_bytes),
            ("container_memory_failures_total", Counter, &m.page_faults),
            (
                "container_memory_major_page_faults_total",
                Counter,
                &m.major_page_faults,
            ),
        ] {
            out.extend(metric(n, m.timestamp, kind, &labels, v.as_ref()));
        }
    }
    if let Some(fs) = &c.writable_layer {
        out.extend(metric(
            "container_fs_usage_bytes",
            fs.timestamp,
            Gauge,
            &labels,
            fs.used_bytes.as_ref(),
        ));
        out.extend(metric(
            "container_fs_inodes_total",
            fs.timestamp,
            Gauge,
            &labels,
            fs.inodes_used.as_ref(),
        ));
    }
    cri::ContainerMetrics {
        container_id: attrs.id,
        metrics: out,
    }
}

/// The metrics of one pod and its containers, from its stats.
pub fn pod_metrics(p: &cri::PodSandboxStats) -> cri::PodSandboxMetrics {
    use cri::MetricType::{Counter, Gauge};
    let id = p
        .attributes
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default();
    let mut metrics = Vec::new();
    let linux = p.linux.clone().unwrap_or_default();
    if let Some(n) = &linux.network {
        for i in &n.interfaces {
            let labels = [id.as_str(), "POD", i.name.as_str()];
            for (name, v) in [
                ("container_network_receive_bytes_total", &i.rx_bytes),
                ("container_network_receive_errors_total", &i.rx_errors),
                ("container_network_transmit_bytes_total", &i.tx_bytes),
                ("container_network_transmit_errors_total", &i.tx_errors),
            ] {
                metrics.extend(metric(name, n.timestamp, Counter, &labels, v.as_ref()));
            }
        }
    }
    if let Some(pr) = &linux.process {
        metrics.extend(metric(
            "container_processes",
            pr.timestamp,
            Gauge,
            &[id.as_str(), "POD"],
            pr.process_count.as_ref(),
        ));
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: id,
        metrics,
        container_metrics: linux.containers.iter().map(container_metrics).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(value: u64) -> Option<cri::UInt64Value> {
        Some(cri::UInt64Value { value })
    }

    #[test]
    fn every_metric_has_a_descriptor_with_as_many_labels() {
        let stats = cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: "pod1".into(),
                ..Default::default()
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                network: Some(cri::NetworkUsage {
                    timestamp: 1,
                    default_interface: None,
                    interfaces: vec![cri::NetworkInterfaceUsage {
                        name: "eth0".into(),
                        rx_bytes: v(10),
                        rx_errors: v(0),
                        tx_bytes: v(20),
                        tx_errors: v(1),
                    }],
                }),
                process: Some(cri::ProcessUsage {
                    timestamp: 1,
                    process_count: v(3),
                }),
                containers: vec![cri::ContainerStats {
                    attributes: Some(cri::ContainerAttributes {
                        id: "c1".into(),
                        metadata: Some(cri::ContainerMetadata {
                            name: "web".into(),
                            attempt: 0,
                        }),
                        ..Default::default()
                    }),
                    cpu: Some(cri::CpuUsage {
                        timestamp: 1,
                        usage_core_nano_seconds: v(2_500_000_000),
                        usage_nano_cores: None,
                        psi: None,
                    }),
                    memory: Some(cri::MemoryUsage {
                        timestamp: 1,
                        working_set_bytes: v(4096),
                        usage_bytes: v(8192),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            windows: None,
        };
        let m = pod_metrics(&stats);
        let descs = descriptors();
        let all = m
            .metrics
            .iter()
            .chain(m.container_metrics.iter().flat_map(|c| c.metrics.iter()));
        let mut n = 0;
        for metric in all {
            n += 1;
            let d = descs
                .iter()
                .find(|d| d.name == metric.name)
                .unwrap_or_else(|| panic!("no descriptor for {}", metric.name));
            assert_eq!(d.label_keys.len(), metric.label_values.len(), "{}", d.name);
        }
        // 4 network + processes + cpu + working set + usage.
        assert_eq!(n, 8);
        let c = &m.container_metrics[0];
        assert_eq!(c.container_id, "c1");
        let cpu = c
            .metrics
            .iter()
            .find(|x| x.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.value, v(2));
        assert_eq!(cpu.label_values, ["c1", "web"]);
        let rx = m
            .metrics
            .iter()
            .find(|x| x.name == "container_network_receive_bytes_total")
            .unwrap();
        assert_eq!(rx.label_values, ["pod1", "POD", "eth0"]);
        assert_eq!(rx.value, v(10));
    }
}
