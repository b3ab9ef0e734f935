"""The coding evaluation set of `cascade calibrate`: 40 small Python problems, each a prompt and
unit tests. `python3 bench/eval/problems.py > bench/eval/coding.jsonl` writes the eval file; each
line's command runs `check.py ID`, which reads the model's answer on stdin, takes its Python code
and runs the problem's tests against it (exit 0 = pass). Written for this project (not HumanEval)."""

import json
import sys

P = []


def problem(pid, prompt, tests):
    P.append((pid, prompt, tests))


problem("fib", "Write a Python function `fib(n)` that returns the n-th Fibonacci number, with fib(0) = 0 and fib(1) = 1.",
        "assert fib(0) == 0\nassert fib(1) == 1\nassert fib(10) == 55\nassert fib(30) == 832040")
problem("is_palindrome", "Write a Python function `is_palindrome(s)` that returns True when the string reads the same backwards, ignoring case and non-alphanumeric characters.",
        "assert is_palindrome('A man, a plan, a canal: Panama')\nassert not is_palindrome('hello')\nassert is_palindrome('')\nassert is_palindrome('No lemon, no melon')")
problem("fizzbuzz", "Write a Python function `fizzbuzz(n)` that returns a list of strings for 1..n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, else the number as a string.",
        "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']\nassert fizzbuzz(15)[-1] == 'FizzBuzz'\nassert len(fizzbuzz(100)) == 100")
problem("gcd", "Write a Python function `gcd(a, b)` that returns the greatest common divisor of two non-negative integers without using the math module.",
        "assert gcd(12, 18) == 6\nassert gcd(17, 5) == 1\nassert gcd(0, 9) == 9\nassert gcd(100, 75) == 25")
problem("is_prime", "Write a Python function `is_prime(n)` that returns True if the integer n is a prime number.",
        "assert not is_prime(1)\nassert is_prime(2)\nassert is_prime(97)\nassert not is_prime(91)\nassert not is_prime(0)\nassert not is_prime(-7)")
problem("reverse_words", "Write a Python function `reverse_words(s)` that reverses the order of the words in a sentence; words are separated by single spaces.",
        "assert reverse_words('the sky is blue') == 'blue is sky the'\nassert reverse_words('hello') == 'hello'")
problem("count_vowels", "Write a Python function `count_vowels(s)` that returns how many vowels (a, e, i, o, u, either case) the string contains.",
        "assert count_vowels('Hello World') == 3\nassert count_vowels('xyz') == 0\nassert count_vowels('AEIOU') == 5")
problem("flatten", "Write a Python function `flatten(xs)` that flattens an arbitrarily nested list of integers into a flat list, keeping the order.",
        "assert flatten([1, [2, [3, 4]], 5]) == [1, 2, 3, 4, 5]\nassert flatten([]) == []\nassert flatten([[[]]]) == []")
problem("two_sum", "Write a Python function `two_sum(nums, target)` that returns a tuple (i, j) with i < j of the indices of the two numbers that add up to target. Exactly one solution exists.",
        "assert tuple(two_sum([2, 7, 11, 15], 9)) == (0, 1)\nassert tuple(two_sum([3, 2, 4], 6)) == (1, 2)")
problem("anagrams", "Write a Python function `are_anagrams(a, b)` that returns True if the two strings are anagrams of each other, ignoring spaces and case.",
        "assert are_anagrams('Listen', 'Silent')\nassert are_anagrams('dormitory', 'dirty room')\nassert not are_anagrams('abc', 'abd')")
problem("binary_search", "Write a Python function `binary_search(xs, x)` that returns the index of x in the sorted list xs, or -1 if it is absent.",
        "assert binary_search([1, 3, 5, 7, 9], 7) == 3\nassert binary_search([1, 3, 5], 4) == -1\nassert binary_search([], 1) == -1\nassert binary_search([2], 2) == 0")
problem("merge_sorted", "Write a Python function `merge_sorted(a, b)` that merges two sorted lists into one sorted list without calling sort or sorted.",
        "assert merge_sorted([1, 4, 6], [2, 3, 7]) == [1, 2, 3, 4, 6, 7]\nassert merge_sorted([], [1]) == [1]\nassert merge_sorted([1, 1], [1]) == [1, 1, 1]")
problem("roman", "Write a Python function `to_roman(n)` that converts an integer from 1 to 3999 to a Roman numeral string.",
        "assert to_roman(4) == 'IV'\nassert to_roman(9) == 'IX'\nassert to_roman(1994) == 'MCMXCIV'\nassert to_roman(3999) == 'MMMCMXCIX'")
problem("from_roman", "Write a Python function `from_roman(s)` that converts a Roman numeral string to an integer.",
        "assert from_roman('III') == 3\nassert from_roman('LVIII') == 58\nassert from_roman('MCMXCIV') == 1994")
problem("word_count", "Write a Python function `word_count(text)` that returns a dict mapping each lowercase word to how often it occurs; words are separated by whitespace and punctuation .,!? is stripped.",
        "assert word_count('The cat. The hat!') == {'the': 2, 'cat': 1, 'hat': 1}\nassert word_count('') == {}")
problem("max_subarray", "Write a Python function `max_subarray(xs)` that returns the largest sum of a contiguous non-empty sublist of the list of integers xs.",
        "assert max_subarray([-2, 1, -3, 4, -1, 2, 1, -5, 4]) == 6\nassert max_subarray([-3, -1, -2]) == -1\nassert max_subarray([5]) == 5")
problem("balanced", "Write a Python function `balanced(s)` that returns True if the brackets (), [] and {} in s are balanced and properly nested; other characters are ignored.",
        "assert balanced('([]{})')\nassert not balanced('([)]')\nassert balanced('a(b)c')\nassert not balanced('((')\nassert balanced('')")
problem("rle", "Write a Python function `rle(s)` that run-length encodes a string: 'aaabcc' becomes 'a3b1c2'.",
        "assert rle('aaabcc') == 'a3b1c2'\nassert rle('') == ''\nassert rle('z') == 'z1'")
problem("transpose", "Write a Python function `transpose(m)` that returns the transpose of a matrix given as a list of equal-length lists.",
        "assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]\nassert transpose([[1]]) == [[1]]")
problem("chunks", "Write a Python function `chunks(xs, n)` that splits a list into consecutive sublists of length n (the last may be shorter).",
        "assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]\nassert chunks([], 3) == []\nassert chunks([1, 2], 5) == [[1, 2]]")
problem("dedupe", "Write a Python function `dedupe(xs)` that removes duplicates from a list while keeping the first occurrence of each element in order.",
        "assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]\nassert dedupe([]) == []\nassert dedupe(['a', 'a']) == ['a']")
problem("second_largest", "Write a Python function `second_largest(xs)` that returns the second largest distinct value of a list, or None if there is none.",
        "assert second_largest([4, 1, 4, 3]) == 3\nassert second_largest([7]) is None\nassert second_largest([2, 2]) is None")
problem("digits_sum", "Write a Python function `digit_sum(n)` that returns the sum of the decimal digits of a non-negative integer.",
        "assert digit_sum(0) == 0\nassert digit_sum(12345) == 15\nassert digit_sum(9999) == 36")
problem("caesar", "Write a Python function `caesar(s, k)` that shifts each ASCII letter of s by k places in the alphabet (wrapping around, keeping case) and leaves other characters unchanged.",
        "assert caesar('abc', 1) == 'bcd'\nassert caesar('XYZ', 3) == 'ABC'\nassert caesar('Hello, World!', 13) == 'Uryyb, Jbeyq!'")
problem("matrix_mul", "Write a Python function `matmul(a, b)` that multiplies two matrices given as lists of lists.",
        "assert matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]]) == [[19, 22], [43, 50]]\nassert matmul([[2]], [[3]]) == [[6]]")
problem("primes_upto", "Write a Python function `primes_upto(n)` that returns the list of primes less than or equal to n, using the sieve of Eratosthenes.",
        "assert primes_upto(10) == [2, 3, 5, 7]\nassert primes_upto(1) == []\nassert primes_upto(2) == [2]\nassert len(primes_upto(1000)) == 168")
problem("capitalize", "Write a Python function `title_case(s)` that capitalizes the first letter of every word and lowercases the rest; words are separated by single spaces.",
        "assert title_case('hello WORLD') == 'Hello World'\nassert title_case('a') == 'A'")
problem("valid_ipv4", "Write a Python function `valid_ipv4(s)` that returns True if s is a dotted IPv4 address: four decimal numbers 0..255 without leading zeros.",
        "assert valid_ipv4('192.168.0.1')\nassert not valid_ipv4('256.1.1.1')\nassert not valid_ipv4('1.2.3')\nassert not valid_ipv4('01.2.3.4')\nassert valid_ipv4('0.0.0.0')")
problem("lcs_len", "Write a Python function `lcs_length(a, b)` that returns the length of the longest common subsequence of two strings.",
        "assert lcs_length('abcde', 'ace') == 3\nassert lcs_length('abc', 'def') == 0\nassert lcs_length('', 'a') == 0")
problem("edit_distance", "Write a Python function `edit_distance(a, b)` that returns the Levenshtein distance between two strings.",
        "assert edit_distance('kitten', 'sitting') == 3\nassert edit_distance('', 'abc') == 3\nassert edit_distance('same', 'same') == 0")
problem("stack_class", "Write a Python class `Stack` with methods push(x), pop() (returns the top item), peek(), and is_empty().",
        "s = Stack()\nassert s.is_empty()\ns.push(1)\ns.push(2)\nassert s.peek() == 2\nassert s.pop() == 2\nassert s.pop() == 1\nassert s.is_empty()")
problem("queue_two_stacks", "Write a Python class `Queue` implemented with two lists used as stacks, with methods enqueue(x), dequeue() (returns the oldest item) and __len__.",
        "q = Queue()\nq.enqueue(1)\nq.enqueue(2)\nq.enqueue(3)\nassert q.dequeue() == 1\nassert len(q) == 2\nq.enqueue(4)\nassert [q.dequeue() for _ in range(3)] == [2, 3, 4]")
problem("median", "Write a Python function `median(xs)` that returns the median of a non-empty list of numbers (the mean of the two middle values for an even length).",
        "assert median([3, 1, 2]) == 2\nassert median([4, 1, 3, 2]) == 2.5\nassert median([7]) == 7")
problem("mode", "Write a Python function `most_common(xs)` that returns the most frequent element of a non-empty list; on a tie, the one that appears first.",
        "assert most_common([1, 2, 2, 3, 3]) == 2\nassert most_common(['a']) == 'a'\nassert most_common([5, 4, 4, 5]) == 5")
problem("binary_string", "Write a Python function `to_binary(n)` that returns the binary representation of a non-negative integer as a string, without using bin() or format().",
        "assert to_binary(0) == '0'\nassert to_binary(5) == '101'\nassert to_binary(255) == '11111111'")
problem("pascal", "Write a Python function `pascal(n)` that returns the first n rows of Pascal's triangle as a list of lists.",
        "assert pascal(1) == [[1]]\nassert pascal(4) == [[1], [1, 1], [1, 2, 1], [1, 3, 3, 1]]\nassert pascal(0) == []")
problem("snake_case", "Write a Python function `snake_case(s)` that converts a camelCase or PascalCase identifier to snake_case.",
        "assert snake_case('camelCase') == 'camel_case'\nassert snake_case('PascalCaseName') == 'pascal_case_name'\nassert snake_case('x') == 'x'")
problem("interval_merge", "Write a Python function `merge_intervals(xs)` that merges overlapping intervals given as a list of [start, end] pairs and returns them sorted by start.",
        "assert merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]]) == [[1, 6], [8, 10], [15, 18]]\nassert merge_intervals([[1, 4], [4, 5]]) == [[1, 5]]\nassert merge_intervals([]) == []")
problem("rotate_list", "Write a Python function `rotate(xs, k)` that rotates a list to the right by k steps (k may exceed the length).",
        "assert rotate([1, 2, 3, 4, 5], 2) == [4, 5, 1, 2, 3]\nassert rotate([1, 2], 5) == [2, 1]\nassert rotate([], 3) == []")
problem("factorial_trailing", "Write a Python function `trailing_zeros(n)` that returns the number of trailing zeros of n factorial without computing n factorial.",
        "assert trailing_zeros(5) == 1\nassert trailing_zeros(25) == 6\nassert trailing_zeros(0) == 0\nassert trailing_zeros(1000) == 249")

SUFFIX = " Reply with the code in one ```python block."

if __name__ == "__main__":
    assert len({p[0] for p in P}) == len(P) >= 40, len(P)
    for pid, prompt, _ in P:
        print(json.dumps({"id": pid, "prompt": prompt + SUFFIX, "chat": True,
                          "command": f"python3 bench/eval/check.py {pid}"}))
