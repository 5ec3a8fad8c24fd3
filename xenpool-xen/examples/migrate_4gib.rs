//! Live-migrates a simulated 4 GiB VM between two simulated hosts in one process and prints
//! how long it took, how long the guest was paused, and the bytes moved.
//!
//! The guest's image is sparse: it has touched `--touched-mib` of its 4 GiB (1024 by
//! default), and while it is copied it keeps writing `--dirty-pages` pages per batch of 256
//! pages read (64 by default) inside a `--working-set-mib` region (64 by default). Times are
//! wall-clock through the in-process path (page reads, stream encoding, checksums, decoding,
//! page writes): no network.
//!
//! ```text
//! cargo run --release -p xenpool-xen --example migrate_4gib -- [--touched-mib N] [--dirty-pages N] [--working-set-mib N]
//! ```

use std::error::Error;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use xenpool_xen::hypervisor::{DomainSpec, Hypervisor};
use xenpool_xen::{
    migrate_domain, LocalTarget, MigrationEvent, PrecopyPolicy, SimulatedConfig,
    SimulatedHypervisor, WorkloadConfig, PAGE_SIZE,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn arg(name: &str, default: u64) -> Result<u64, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()?),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let touched_mib = arg("--touched-mib", 1024)?;
    let dirty_pages = arg("--dirty-pages", 64)?;
    let working_set_mib = arg("--working-set-mib", 64)?;
    let page = PAGE_SIZE as u64;

    let config = SimulatedConfig {
        memory_total: 8 * GIB,
        ..SimulatedConfig::default()
    };
    let source = SimulatedHypervisor::new(config.clone())?;
    let destination = SimulatedHypervisor::new(config)?;
    let domid = source.create_domain(&DomainSpec {
        uuid: "00000000-0000-4000-8000-000000000004".into(),
        name: "four-gib".into(),
        memory: 4 * GIB,
        vcpus: 4,
    })?;
    source.populate_guest(domid, 0, touched_mib * MIB / page, 1)?;
    source.set_guest_workload(
        domid,
        Some(WorkloadConfig {
            seed: 2,
            pages_per_step: u32::try_from(dirty_pages)?,
            working_set_start: 0,
            working_set_pages: (working_set_mib * MIB / page).max(1),
        }),
    )?;
    source.unpause(domid)?;

    let policy = PrecopyPolicy::default();
    let mut target = LocalTarget::new(&destination);
    let mut paused_at = None;
    let mut resumed_at = None;
    let start = Instant::now();
    let report = migrate_domain(&source, domid, &mut target, &policy, &mut |e| {
        match e {
            MigrationEvent::SourcePaused => paused_at = Some(Instant::now()),
            MigrationEvent::DestinationResumed => resumed_at = Some(Instant::now()),
            MigrationEvent::Progress(_) => {}
        }
        ControlFlow::Continue(())
    })?;
    let total = start.elapsed();
    let pause = match (paused_at, resumed_at) {
        (Some(p), Some(r)) => r.duration_since(p),
        _ => Duration::ZERO,
    };
    let mib = |b: u64| b as f64 / MIB as f64;
    println!(
        "VM memory:            4096 MiB ({} pages)",
        report.memory_pages
    );
    println!("touched by the guest: {touched_mib} MiB");
    println!(
        "guest writes:         {dirty_pages} pages per 256 pages read, in {working_set_mib} MiB"
    );
    println!("rounds:               {} (last one paused)", report.rounds);
    println!(
        "sent:                 {} pages, {:.1} MiB of stream",
        report.pages_sent,
        mib(report.bytes_sent)
    );
    println!(
        "sent while paused:    {} pages, {:.2} MiB",
        report.paused_pages,
        mib(report.paused_bytes)
    );
    println!("migration time:       {:.1} ms", total.as_secs_f64() * 1e3);
    println!("pause time:           {:.2} ms", pause.as_secs_f64() * 1e3);
    println!(
        "throughput:           {:.0} MiB/s",
        mib(report.bytes_sent) / total.as_secs_f64()
    );
    Ok(())
}
