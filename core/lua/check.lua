return decide(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[4]), ARGV[2], now_us(ARGV[1]),
              given_limits(6), tonumber(ARGV[3]), true, {wait = tonumber(ARGV[5]) * 1000})
