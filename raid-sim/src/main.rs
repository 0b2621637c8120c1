fn main() {
    eprintln!("raid-sim: no commands yet");
    std::process::exit(2);
}
