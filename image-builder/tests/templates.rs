//! Unit-level checks of the shipped templates: every one parses, its files render to the
//! committed golden output, and stage keys react only where they should.

use std::path::{Path, PathBuf};

use image_builder::{BuildOptions, Spec, plan, render_files};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate sits in the workspace")
        .to_owned()
}

fn templates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("templates/images"))
        .expect("templates/images exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("image.toml").exists())
        .collect();
    v.sort();
    v
}

fn sets_for(dir: &Path) -> Vec<(String, String)> {
    if dir.ends_with("deploy-ramdisk") {
        vec![("imager".into(), "/bin/true".into())]
    } else {
        Vec::new()
    }
}

#[test]
fn every_shipped_template_parses_and_renders_to_golden_output() {
    let all = templates();
    assert!(all.len() >= 3, "{all:?}");
    for dir in all {
        let spec = Spec::load(&dir, &sets_for(&dir)).expect("template parses");
        let mut out = String::new();
        for f in render_files(&spec).expect("files render") {
            out.push_str(&format!(
                "==> {} (mode {:o}) <==\n{}\n",
                f.spec.dest,
                f.spec.mode,
                String::from_utf8_lossy(&f.content)
            ));
        }
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        expectorate::assert_contents(format!("tests/output/{name}.files.txt"), &out);
    }
}

#[test]
fn ramdisk_template_refuses_to_build_without_an_imager() {
    let err = Spec::load(&repo().join("templates/images/deploy-ramdisk"), &[])
        .expect_err("no imager given");
    let msg = common::ErrorChain(&err).to_string();
    assert!(msg.contains("--set imager=PATH"), "{msg}");
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read dir") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

#[test]
fn changing_a_rendered_file_changes_only_later_stage_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let apt = tmp.path().join("apt");
    std::fs::create_dir_all(&apt).expect("mkdir");
    std::fs::write(
        apt.join("sources.list"),
        "deb http://mirror.invalid/debian bookworm main\n",
    )
    .expect("write sources");
    let tpl = tmp.path().join("tpl");
    copy_dir(&repo().join("templates/images/minimal"), &tpl);
    let opts = BuildOptions {
        template: tpl.clone(),
        out: tmp.path().join("out"),
        sets: Vec::new(),
        cache_dir: tmp.path().join("cache"),
        apt_root: apt,
        source_date_epoch: 0,
    };
    let a = plan(&opts).expect("plan").keys;
    assert_eq!(plan(&opts).expect("plan").keys.input_hash(), a.input_hash());

    std::fs::write(tpl.join("files/motd.hbs"), "changed {{greeting}}\n").expect("edit");
    let b = plan(&opts).expect("plan").keys;
    assert_eq!(a.bootstrap, b.bootstrap);
    assert_ne!(a.customise, b.customise);
    assert_ne!(a.rootfs, b.rootfs);
    assert_ne!(a.disk, b.disk);
    assert_ne!(a.qcow2, b.qcow2);

    // A --set that only feeds a rendered file behaves the same way.
    let c = plan(&BuildOptions {
        sets: vec![("greeting".into(), "hi".into())],
        ..opts.clone()
    })
    .expect("plan")
    .keys;
    assert_eq!(a.bootstrap, c.bootstrap);
    assert_ne!(b.customise, c.customise);

    // A package change reaches the bootstrap key and everything after it.
    let text = std::fs::read_to_string(tpl.join("image.toml")).expect("read spec");
    std::fs::write(
        tpl.join("image.toml"),
        text.replace("\"fdisk\",", "\"fdisk\", \"less\","),
    )
    .expect("edit spec");
    let d = plan(&opts).expect("plan").keys;
    assert_ne!(b.bootstrap, d.bootstrap);
    assert_ne!(b.customise, d.customise);
}
