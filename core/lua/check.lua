return decide(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2], now_us(ARGV[3]),
              tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
