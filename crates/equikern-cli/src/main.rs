fn main() {
    println!("equikern");
}
