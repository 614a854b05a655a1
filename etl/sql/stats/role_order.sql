-- Records breaking positive > hard > related/easy by teacher score (expected: 0 rows).
SELECT query_id, roles, teacher_scores FROM examples
WHERE NOT list_reduce(
    list_transform(range(1, len(roles)), lambda i: teacher_scores[i] >= teacher_scores[i + 1]
        AND (roles[i + 1] <> 'hard' OR roles[i] IN ('positive', 'hard'))),
    lambda a, b: a AND b)
