fn main() {
    eprintln!("mirror-agent: not built yet");
    std::process::exit(2);
}
