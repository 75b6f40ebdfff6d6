//! The files of a run: an output (or job log, or statistics file) that is the
//! input or another output is refused before anything is written; write
//! errors name the file they are about.

use std::fs;
use std::time::Duration;

use crate::util::{
    assert_same_output, coordinator, fault_input, ok_n, tempdir, within, write_file,
};

fn input3(dir: &std::path::Path) -> String {
    write_file(dir, "in.jsonl", fault_input([(1, ""), (2, ""), (3, "")]))
}

#[test]
fn output_that_is_the_input_is_refused_by_any_spelling() {
    let dir = tempdir();
    let input = input3(dir.path());
    let before = fs::read(&input).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let dotted = format!("{}/./in.jsonl", dir.path().display());
    for (flag, out) in [
        ("--output", input.clone()),
        ("--output", link.display().to_string()),
        ("--output", dotted.clone()),
        ("--joblog", dotted.clone()),
        ("--stats-json", link.display().to_string()),
    ] {
        let run = coordinator([
            "--task",
            "fault",
            "--workers",
            "1",
            "--input",
            &input,
            flag,
            &out,
        ])
        .run();
        run.assert_code(2);
        let e = run.the_error();
        assert!(
            e.contains("same file") && e.contains("--input") && e.contains(flag),
            "{e}"
        );
        assert!(
            run.spawned_pids().is_empty(),
            "workers started before the check"
        );
        assert_eq!(
            fs::read(&input).unwrap(),
            before,
            "{flag} {out}: the input changed"
        );
    }
    // The same with --resume, which would otherwise append to it.
    let run = coordinator([
        "--task", "fault", "--input", &input, "--output", &dotted, "--resume",
    ])
    .run();
    run.assert_code(2);
    assert_eq!(fs::read(&input).unwrap(), before);
}

#[test]
fn two_outputs_on_one_file_are_refused_before_either_is_created() {
    let dir = tempdir();
    let input = input3(dir.path());
    let out = dir.path().join("out.jsonl");
    let same = format!(
        "{}/../{}/out.jsonl",
        dir.path().display(),
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    let run = coordinator([
        "--task",
        "fault",
        "--input",
        &input,
        "--output",
        out.to_str().unwrap(),
        "--joblog",
        &same,
    ])
    .run();
    run.assert_code(2);
    assert!(run.the_error().contains("--joblog"), "{}", run.the_error());
    assert!(!out.exists(), "the output was created before the check");
    // Distinct files are fine, and several outputs may share /dev/null.
    coordinator([
        "--task",
        "fault",
        "--input",
        &input,
        "--output",
        "/dev/null",
        "--joblog",
        "/dev/null",
        "--stats-json",
        "/dev/null",
    ])
    .run()
    .assert_code(0);
    // A device keeps no resume file beside it (seen through a link of this
    // test's own, so that no other run's files can interfere).
    let null = dir.path().join("null");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    coordinator(["--task", "fault", "--input", &input, "--output"])
        .arg(&null)
        .run()
        .assert_code(0);
    assert!(!dir.path().join("null.procpool-resume").exists());
}

#[test]
fn an_output_already_there_is_replaced_with_its_mode_and_written_through_its_links() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempdir();
    let input = input3(dir.path());
    let expected: String = (1..=3).map(|n| ok_n(n) + "\n").collect();
    let run = |out: &std::path::Path| {
        coordinator([
            "--task",
            "fault",
            "--workers",
            "1",
            "--input",
            &input,
            "--output",
        ])
        .arg(out)
        .run()
        .assert_code(0);
    };
    // A file of this user with one name: a new file in its place, with its
    // mode (group- and other-writable, which a umask of 022 would cut).
    let plain = dir.path().join("plain.jsonl");
    fs::write(&plain, "an earlier output\n".repeat(1000)).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o666)).unwrap();
    // Held open, the old file shows whether it was replaced (it then has no
    // name left, and its bytes) or truncated (the new bytes).
    let held = fs::File::open(&plain).unwrap();
    run(&plain);
    let old = held.metadata().unwrap();
    assert_eq!(old.nlink(), 0, "truncated in place instead of replaced");
    assert_eq!(old.len(), 18_000);
    let meta = fs::metadata(&plain).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    assert_same_output(&fs::read_to_string(&plain).unwrap(), &expected, "replaced");
    // A symlink stays one, and its target holds the output.
    let target = dir.path().join("target.jsonl");
    fs::write(&target, "an earlier output\n").unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    run(&link);
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_same_output(&fs::read_to_string(&target).unwrap(), &expected, "symlink");
    // A file with a second name is written in place: both names show it.
    let first = dir.path().join("first.jsonl");
    let second = dir.path().join("second.jsonl");
    fs::write(&first, "an earlier output\n").unwrap();
    fs::hard_link(&first, &second).unwrap();
    run(&first);
    assert_eq!(
        fs::metadata(&first).unwrap().ino(),
        fs::metadata(&second).unwrap().ino()
    );
    assert_same_output(
        &fs::read_to_string(&second).unwrap(),
        &expected,
        "hard link",
    );
    // Written in place too, so that nothing but the contents changes: a file
    // with a setgid bit, and one with an extended attribute.
    let truncated = |path: &std::path::Path, what: &str| {
        let held = fs::File::open(path).unwrap();
        run(path);
        assert_eq!(held.metadata().unwrap().nlink(), 1, "{what}: replaced");
        assert_same_output(&fs::read_to_string(path).unwrap(), &expected, what);
    };
    let setgid = dir.path().join("setgid.jsonl");
    fs::write(&setgid, "an earlier output\n").unwrap();
    fs::set_permissions(&setgid, fs::Permissions::from_mode(0o2644)).unwrap();
    truncated(&setgid, "setgid");
    let tagged = dir.path().join("tagged.jsonl");
    fs::write(&tagged, "an earlier output\n").unwrap();
    let name = std::ffi::CString::new(tagged.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let set = unsafe {
        libc::setxattr(
            name.as_ptr(),
            c"user.origin".as_ptr(),
            b"kept".as_ptr().cast(),
            4,
            0,
        )
    };
    if set == 0 {
        truncated(&tagged, "extended attribute");
    } else {
        eprintln!(
            "no user extended attributes here ({}): that case not checked",
            std::io::Error::last_os_error()
        );
    }
    // A read-only output is refused as before (root may write it anyway).
    // SAFETY: takes no argument, cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let locked = dir.path().join("locked.jsonl");
        fs::write(&locked, "an earlier output\n").unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o444)).unwrap();
        let out = coordinator(["--task", "fault", "--input", &input, "--output"])
            .arg(&locked)
            .run();
        out.assert_code(2);
        assert_eq!(fs::read_to_string(&locked).unwrap(), "an earlier output\n");
    }
}

#[test]
fn stdout_or_stdin_that_is_the_input_is_refused() {
    let dir = tempdir();
    let input = input3(dir.path());
    let before = fs::read(&input).unwrap();
    // `coordinator --input in.jsonl >> in.jsonl` would read its own output forever.
    let run = coordinator(["--task", "fault", "--input", &input])
        .stdout_to(&input)
        .run();
    run.assert_code(2);
    assert!(run.the_error().contains("stdout"), "{}", run.the_error());
    assert_eq!(fs::read(&input).unwrap(), before);
    // `coordinator --input - --output in.jsonl < in.jsonl`: stdin is that file.
    let run = coordinator(["--task", "fault", "--input", "-", "--output", &input])
        .stdin_from(&input)
        .run();
    run.assert_code(2);
    assert!(run.the_error().contains("stdin"), "{}", run.the_error());
    assert_eq!(fs::read(&input).unwrap(), before);
}

#[test]
fn write_errors_name_the_file() {
    let dir = tempdir();
    let input = input3(dir.path());
    let fault = [
        "--task",
        "fault",
        "--workers",
        "1",
        "--input",
        input.as_str(),
    ];
    for (flag, name) in [
        ("--output", "output /dev/full"),
        ("--joblog", "job log /dev/full"),
        ("--stats-json", "statistics file /dev/full"),
    ] {
        let run = coordinator(fault).args([flag, "/dev/full"]).run();
        run.assert_code(2);
        let e = run.the_error();
        assert!(
            e.contains(name) && e.contains("No space left"),
            "{flag}: {e}"
        );
        run.assert_no_panic();
    }
    // stdout on a full device.
    let run = coordinator(fault).stdout_to("/dev/full").run();
    run.assert_code(2);
    let e = run.the_error();
    assert!(
        e.contains("cannot write stdout") && e.contains("No space left"),
        "{e}"
    );
    // A job log in a directory that does not exist: named, and nothing run.
    let missing = dir.path().join("no/such/jobs.tsv");
    let run = coordinator(fault).arg("--joblog").arg(&missing).run();
    run.assert_code(2);
    assert!(
        run.the_error().contains(missing.to_str().unwrap()),
        "{}",
        run.the_error()
    );
}

#[test]
fn scale_checks_its_chart_before_measuring() {
    let dir = tempdir();
    let chart = dir.path().join("no/such/scale.svg");
    let run = coordinator(["scale", "--workers", "1", "--records", "20", "--chart"])
        .arg(&chart)
        .run();
    run.assert_code(2);
    assert!(run.the_error().contains("--chart"), "{}", run.the_error());
    assert!(
        run.spawned_pids().is_empty(),
        "it measured before checking the chart"
    );
    // A chart that is its input is refused as well.
    let input = write_file(dir.path(), "n.jsonl", "{\"n\":1000}\n");
    let run = coordinator([
        "scale",
        "--workers",
        "1",
        "--input",
        &input,
        "--chart",
        &input,
    ])
    .run();
    run.assert_code(2);
    assert!(run.the_error().contains("same file"), "{}", run.the_error());
}

/// The output file is created beside the first records rather than before
/// them (truncating a large output of an earlier run takes milliseconds):
/// here it is a FIFO that nobody reads yet, so creating it waits, and the
/// records still run; their lines come out, in order, once it can be written.
#[test]
fn records_run_while_the_output_is_still_being_created() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..16).map(|n| (n, ""))),
    );
    let fifo = dir.path().join("out.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut run = coordinator(["--task", "fault", "--workers", "2", "--input", &input])
        .arg("--output")
        .arg(&fifo)
        .spawn();
    // (Each worker logs its first 20 records.)
    run.wait_for("every record to run with the output not yet open", |r| {
        r.stderr_now().matches(" working record ").count() >= 16
    });
    let reader = fifo.clone();
    let text = within(Duration::from_secs(30), move || {
        fs::read_to_string(reader).unwrap()
    });
    let run = run.wait();
    run.assert_code(0);
    run.assert_no_panic();
    let expected: String = (0..16).map(|n| ok_n(n) + "\n").collect();
    assert_same_output(&text, &expected, "the FIFO's lines");
}

/// An earlier, longer output is replaced whole; an output that cannot be
/// created is named, as before.
#[test]
fn an_earlier_longer_output_is_replaced_and_an_uncreatable_one_named() {
    let dir = tempdir();
    let input = input3(dir.path());
    let out = dir.path().join("out.jsonl");
    fs::write(&out, "{\"stale\":true}\n".repeat(200_000)).unwrap();
    let fault = [
        "--task",
        "fault",
        "--workers",
        "2",
        "--input",
        input.as_str(),
    ];
    let run = coordinator(fault).arg("--output").arg(&out).run();
    run.assert_code(0);
    let expected: String = (1..=3).map(|n| ok_n(n) + "\n").collect();
    assert_same_output(&fs::read_to_string(&out).unwrap(), &expected, "output");

    let missing = dir.path().join("no/such/out.jsonl");
    let run = coordinator(fault).arg("--output").arg(&missing).run();
    run.assert_code(2);
    run.assert_no_panic();
    let e = run.the_error();
    assert!(
        e.contains(&format!("cannot open output {}", missing.display()))
            && e.contains("No such file"),
        "{e}"
    );
}
