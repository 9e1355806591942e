return decide(KEYS[1], KEYS[2], tonumber(ARGV[4]), ARGV[2], now_us(ARGV[1]), given_limits(5),
              tonumber(ARGV[3]), true)
