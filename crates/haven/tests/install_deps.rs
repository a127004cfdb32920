//! `scripts/install-deps.sh` takes the bookworm-backports source from the
//! machine's own Debian source and never names a mirror itself (issue 8,
//! finding 9). Runs `install-deps.sh --backports-source` (prints, changes
//! nothing) against APT directories made up for each case.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-deps.sh")
}

/// An APT directory with these `(relative path, content)` source files.
fn apt_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sources.list.d")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn backports_source(apt: &Path) -> Output {
    Command::new("bash")
        .arg(script())
        .arg("--backports-source")
        .env("HAVEN_APT_DIR", apt)
        .output()
        .unwrap()
}

fn derived(files: &[(&str, &str)]) -> String {
    let apt = apt_dir(files);
    let out = backports_source(apt.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const DEBIAN_SOURCES: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://debian-mirror.internal/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://debian-mirror.internal/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

#[test]
fn derives_backports_from_the_machines_deb822_debian_source() {
    let out = derived(&[("sources.list.d/debian.sources", DEBIAN_SOURCES)]);
    assert_eq!(
        out,
        "Types: deb\nURIs: http://debian-mirror.internal/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
}

#[test]
fn skips_security_disabled_and_foreign_entries() {
    let sources = "\
Types: deb
URIs: http://debian-mirror.internal/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://old-mirror.internal/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src
URIs: http://src-mirror.internal/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://snapshot-mirror.internal/archive/debian/20250520T000000Z
Suites: bookworm
Components: main contrib
Signed-By: /etc/apt/keyrings/local.gpg
";
    let out = derived(&[
        (
            "sources.list.d/nodesource.sources",
            "Types: deb\nURIs: https://nodesource.internal/node_20.x\nSuites: nodistro\nComponents: main\n",
        ),
        ("sources.list.d/z.sources", sources),
    ]);
    assert!(
        out.contains("URIs: http://snapshot-mirror.internal/archive/debian/20250520T000000Z\n"),
        "{out}"
    );
    assert!(
        out.contains("Signed-By: /etc/apt/keyrings/local.gpg\n"),
        "{out}"
    );
}

#[test]
fn derives_backports_from_a_one_line_source() {
    let out = derived(&[(
        "sources.list",
        "# the local mirror\ndeb-src http://src-mirror.internal/debian bookworm main\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/mirror.gpg] http://debian-mirror.internal/debian bookworm main non-free-firmware\n",
    )]);
    assert!(
        out.contains("URIs: http://debian-mirror.internal/debian\n"),
        "{out}"
    );
    assert!(
        out.contains("Signed-By: /etc/apt/keyrings/mirror.gpg\n"),
        "{out}"
    );
    // Without signed-by, APT's default keyrings: none is named.
    let out = derived(&[(
        "sources.list",
        "deb http://debian-mirror.internal/debian bookworm main\n",
    )]);
    assert!(!out.contains("Signed-By"), "{out}");
}

#[test]
fn keeps_an_inline_signing_key() {
    let sources = "\
Types: deb
URIs: http://debian-mirror.internal/debian
Suites: bookworm
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
 -----END PGP PUBLIC KEY BLOCK-----
";
    let out = derived(&[("sources.list.d/debian.sources", sources)]);
    assert!(
        out.ends_with("Signed-By: \n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w\n -----END PGP PUBLIC KEY BLOCK-----\n"),
        "{out}"
    );
}

#[test]
fn an_existing_backports_source_is_kept() {
    for files in [
        vec![(
            "sources.list",
            "deb http://debian-mirror.internal/debian bookworm main\ndeb http://debian-mirror.internal/debian bookworm-backports main\n",
        )],
        vec![
            ("sources.list.d/debian.sources", DEBIAN_SOURCES),
            (
                "sources.list.d/backports.sources",
                "Types: deb\nURIs: http://debian-mirror.internal/debian\nSuites: bookworm-backports\nComponents: main\n",
            ),
        ],
    ] {
        let out = derived(&files);
        assert!(out.contains("already"), "{out}");
    }
    // A disabled one, or one APT does not read, does not count.
    let out = derived(&[
        ("sources.list.d/debian.sources", DEBIAN_SOURCES),
        (
            "sources.list.d/backports.sources",
            "Types: deb\nURIs: http://debian-mirror.internal/debian\nSuites: bookworm-backports\nComponents: main\nEnabled: no\n",
        ),
        (
            "sources.list.d/backports.list.disabled",
            "deb http://debian-mirror.internal/debian bookworm-backports main\n",
        ),
    ]);
    assert!(out.starts_with("Types: deb\n"), "{out}");
}

#[test]
fn no_debian_source_is_a_clear_error_and_names_no_mirror() {
    for files in [
        vec![],
        vec![(
            "sources.list.d/nodesource.sources",
            "Types: deb\nURIs: https://nodesource.internal/node_20.x\nSuites: nodistro\nComponents: main\n",
        )],
        vec![(
            "sources.list",
            "# deb http://debian-mirror.internal/debian bookworm main\n",
        )],
    ] {
        let apt = apt_dir(&files);
        let out = backports_source(apt.path());
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no APT"), "{err}");
        assert!(err.contains("bookworm"), "{err}");
        assert!(!err.contains("deb.debian.org"), "{err}");
    }
}
