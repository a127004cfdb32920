//! `haven`: the one binary. `haven agent` runs the daemon; every other
//! subcommand is a client of some agent's HTTP API (`--server`).

use clap::Parser;
use haven::cli;

/// jemalloc, not glibc's malloc: the leader serves ten thousand small
/// requests a second at 1,000 hosts, each a handful of short-lived
/// allocations, and glibc's per-thread arenas keep what a snapshot or a
/// large apply freed (ARCHITECTURE.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: a background thread returns
/// freed pages to the system a second after they were last used, rather
/// than only when this process next allocates and after ten seconds (the
/// leader's RSS at 50,000 workloads, ARCHITECTURE.md "Memory").
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

fn main() {
    // Whatever started us may have blocked signals (a test bed or a
    // supervisor blocking SIGTERM for itself): the agent's shutdown and
    // the CLI's Ctrl-C need them delivered.
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    let args = cli::Cli::parse();
    // The lease keeper runs without an async runtime (DESIGN.md §2a).
    if let cli::Cmd::Keeper(k) = &args.command {
        let cfg = haven_keeper::KeeperConfig {
            data_dir: k.data_dir.clone(),
            cgroup_root: k.cgroup_root.clone(),
        };
        if let Err(e) = haven_keeper::run(&cfg) {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code().into());
        }
        return;
    }
    // So does a workload instance's log copier: no threads, small.
    if let cli::Cmd::LogCopier(a) = &args.command {
        haven_drivers::logcopy::run(&a.copier_args());
        return;
    }
    // And `haven notify`, run in a workload's loop at each report.
    if let cli::Cmd::Notify = &args.command {
        std::process::exit(haven::notify::run());
    }
    // And an OCF instance: its own small runtime, started in main.
    if let cli::Cmd::OcfInstance { args } = &args.command {
        haven_drivers::ocf::instance::main(args);
    }
    // And one promote or demote of a promotable OCF member's agent.
    if let cli::Cmd::OcfAction { args } = &args.command {
        haven_drivers::ocf::instance::action_main(args);
    }
    // And an active-standby group's active role: no runtime at all.
    if let cli::Cmd::GroupActive = &args.command {
        haven_drivers::group::main();
    }
    // A client command whose reader leaves (`haven events | head`) ends
    // quietly, as other command-line tools do, instead of panicking on the
    // closed pipe. The agent keeps SIGPIPE ignored: its sockets report
    // errors instead.
    // `haven bench` talks to hundreds of peers over sockets: like the
    // agent and the demo, it must see a closed socket as an error, not die
    // of SIGPIPE and leave its cluster running.
    if !matches!(
        args.command,
        cli::Cmd::Agent(_) | cli::Cmd::Demo(_) | cli::Cmd::Bench { .. }
    ) {
        // SAFETY: restoring the default disposition runs no handler code.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let result = rt.block_on(cli::run(args));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
