//! `lotse`: the all-in-one launcher (work in progress).
fn main() {
    eprintln!("lotse: not wired yet");
    std::process::exit(2);
}
