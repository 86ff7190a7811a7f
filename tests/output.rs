//! A library does not write to stdout: building, using and closing a cache
//! in a child process leaves the child's stdout to the application alone
//! (foyer's device build prints a line there; spillway keeps it off).

mod common;

use common::*;

const ENV_DIR: &str = "SPILLWAY_OUTPUT_DIR";

#[test]
fn a_cache_prints_nothing_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child_test(
        "output_child",
        "exec \"$0\" \"$@\"",
        &[(ENV_DIR, dir.path().as_os_str())],
    );
    assert_child_passed(&out, "child done");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("==========>"),
        "the cache printed to stdout:\n{stdout}"
    );
    // The application's own output still arrives, before and after.
    assert!(stdout.contains("application line 1"), "{stdout}");
    assert!(stdout.contains("application line 2"), "{stdout}");
}

/// The child's entry point; a no-op in a normal test run.
#[test]
fn output_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let rt = two_thread_runtime();
    println!("application line 1");
    rt.block_on(async {
        fill_and_close(small(std::path::Path::new(&dir)), "a", 40).await;
        // Reopening builds the device again.
        let cache = small(std::path::Path::new(&dir)).build().await.unwrap();
        cache.close().await.unwrap();
    });
    println!("application line 2");
    eprintln!("child done");
}
