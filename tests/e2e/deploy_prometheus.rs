//! deploy/'s Prometheus and Grafana files, checked by Debian's promtool 2.42
//! (no BPF needed): the alert rules pass `promtool check rules` and their
//! unit tests (each alert fires on a leaking series and stays silent on a
//! flat one), the scrape config passes `promtool check config`, and every
//! query of the Grafana dashboard is one promtool accepts. The same files
//! run in a real Prometheus against a real agent in watch_prometheus.rs.
#[path = "prometheus_common.rs"]
mod prometheus_common;

use std::{collections::BTreeSet, fs, process::Command};

use prometheus_common::*;
use serde_json::Value;

const ALERTS: [&str; 5] = [
    "OffheapMemoryGrowing",
    "OffheapBuffersDominate",
    "OffheapOOMKill",
    "OffheapDroppedEvents",
    "OffheapAgentMemoryHigh",
];

#[test]
fn alert_rules_pass_promtool_and_fire_only_on_the_leaking_series() {
    let rules = deploy("alerts.yaml");
    let o = run(Command::new(tool("promtool"))
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("SUCCESS: 5 rules found"), "{}", text(&o));

    let tests = deploy("alerts_test.yaml");
    let o = run(Command::new(tool("promtool"))
        .arg("test")
        .arg("rules")
        .arg(&tests));
    assert!(o.status.success(), "{}", text(&o));

    // Every alert is named, has a severity and a summary, and is tested
    // both firing and silent.
    let src = fs::read_to_string(&rules).unwrap();
    let test_src = fs::read_to_string(&tests).unwrap();
    assert_eq!(src.matches("- alert: ").count(), ALERTS.len());
    assert_eq!(src.matches("severity: ").count(), ALERTS.len());
    assert_eq!(src.matches("summary: ").count(), ALERTS.len());
    for a in ALERTS {
        assert!(src.contains(&format!("- alert: {a}\n")), "{a}");
        let evals: Vec<&str> = test_src
            .split("- eval_time: ")
            .filter(|e| e.contains(&format!("alertname: {a}\n")))
            .collect();
        assert!(
            evals.iter().any(|e| e.contains("exp_alerts: []")),
            "{a} is never shown silent"
        );
        assert!(
            evals.iter().any(|e| e.contains("- exp_labels:")),
            "{a} is never shown firing"
        );
    }

    // The unit tests do catch a rule that changed: the growth alert with a
    // threshold above the leaking series' 2 MB/s no longer fires.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("alerts.yaml"),
        src.replace(
            "offheap_growth_bytes_per_second > 1e6",
            "offheap_growth_bytes_per_second > 3e6",
        ),
    )
    .unwrap();
    fs::copy(&tests, dir.path().join("alerts_test.yaml")).unwrap();
    let o = run(Command::new(tool("promtool"))
        .args(["test", "rules"])
        .arg(dir.path().join("alerts_test.yaml")));
    assert!(!o.status.success(), "a broken rule passed: {}", text(&o));
    assert!(
        text(&o).contains("alertname: OffheapMemoryGrowing"),
        "{}",
        text(&o)
    );
}

#[test]
fn scrape_config_passes_promtool_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets.json");
    fs::write(&targets, "[]\n").unwrap();
    let cfg = write_config(dir.path(), &targets, None);
    let o = run(Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(&cfg));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("SUCCESS: 1 rule files found"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("SUCCESS: 5 rules found"), "{}", text(&o));

    // The file as shipped: a promtool built with Kubernetes discovery takes
    // it whole; Debian's rejects that one block and nothing else.
    let o = run(Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(deploy("prometheus-scrape.yaml")));
    if !o.status.success() {
        let out = text(&o);
        let errors: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("line "))
            .collect();
        assert!(
            errors.len() == 1
                && errors[0].ends_with(
                    ": field kubernetes_sd_configs not found in type config.ScrapeConfig"
                ),
            "{out}"
        );
    }
}

#[test]
fn dashboard_parses_and_promtool_accepts_every_query() {
    let d = dashboard();
    assert_eq!(d["uid"], "offheap-pod-memory");
    let vars: BTreeSet<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, BTreeSet::from(["datasource", "pod"]));

    // Panels: unique ids, on Grafana's 24-column grid, every target on the
    // datasource variable with a unique refId and a query.
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len());
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for p in panels {
        let g = &p["gridPos"];
        let (x, w, h) = (
            g["x"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{}", p["title"]);
        assert!(["timeseries", "stat"].contains(&p["type"].as_str().unwrap()));
        assert_eq!(p["datasource"]["uid"], "${datasource}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len());
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    // What the issue asks the dashboard to show, and every metric of the agent.
    for want in [
        "Memory by bucket (stacked)",
        "RSS by process",
        "Off-heap growth rate",
        "OOM kills on the pod's nodes",
        "Agent memory (RSS)",
        "Agent CPU",
    ] {
        assert!(titles.contains(&want), "{want}");
    }
    let queries = dashboard_queries(&d, &[("pod", "0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99")]);
    for metric in [
        "offheap_bucket_bytes",
        "offheap_rss_bytes",
        "offheap_growth_bytes_per_second",
        "offheap_oom_kills_total",
        "offheap_dropped_events_total",
        "offheap_agent_rss_bytes",
        "offheap_agent_cpu_seconds_total",
    ] {
        assert!(queries.iter().any(|(_, q)| q.contains(metric)), "{metric}");
    }
    assert_eq!(
        variable_queries(&d),
        [("offheap_rss_bytes".to_string(), "pod_uid".to_string())]
    );

    // promtool parses each query as the expression of a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (what, q)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      # {what}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            Value::String(q.clone())
        ));
    }
    for (i, (metric, _)) in variable_queries(&d).iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:variable_{i}\n        expr: {}\n",
            Value::String(metric.clone())
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    fs::write(&file, &rules).unwrap();
    let o = run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file));
    assert!(o.status.success(), "{}\n{rules}", text(&o));
    assert!(
        text(&o).contains(&format!("SUCCESS: {} rules found", queries.len() + 1)),
        "{}",
        text(&o)
    );
    // And it rejects a bad one, so the check means something.
    fs::write(&file, rules.replace("sum by (bucket)", "sum by bucket")).unwrap();
    let o = run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file));
    assert!(!o.status.success(), "{}", text(&o));
}
