//! Stand-alone lease keeper: `haven-keeper keeper --data-dir D --cgroup-root R`,
//! the same arguments as `haven keeper`, parsed by hand to stay tiny.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use haven_keeper::KeeperConfig;

const USAGE: &str = "usage: haven-keeper keeper --data-dir DIR --cgroup-root DIR";

fn main() -> ExitCode {
    let Some(cfg) = parse_args(std::env::args_os().skip(1).collect()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match haven_keeper::run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haven-keeper: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn parse_args(args: Vec<OsString>) -> Option<KeeperConfig> {
    let mut args = args.into_iter();
    if args.next()? != "keeper" {
        return None;
    }
    let (mut data_dir, mut cgroup_root) = (None, None);
    while let Some(flag) = args.next() {
        let value = PathBuf::from(args.next()?);
        match flag.to_str()? {
            "--data-dir" => data_dir = Some(value),
            "--cgroup-root" => cgroup_root = Some(value),
            _ => return None,
        }
    }
    Some(KeeperConfig {
        data_dir: data_dir?,
        cgroup_root: cgroup_root?,
    })
}
